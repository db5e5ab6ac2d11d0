"""A small callback that logs the Hessian trace (Hutch++) every N optimizer steps, e.g. to TensorBoard."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

from .spectral import hessian_trace

__all__ = ["HessianTraceCallback"]


class HessianTraceCallback(TrainerCallback):
    """Logs ``hessian_trace`` and ``hessian_trace_stderr`` (Hutch++, :func:`~hf_subspace.spectral.hessian_trace`)
    at every ``every``-th optimizer step, through the trainer's ``log`` (so every ``report_to`` integration sees it).

    Under several processes every rank runs the estimate (the operator's products are collective) with the same
    seed, ``seed + step``.

    Args:
        operator: the Hessian operator (the trainer's :class:`~hf_subspace.HessianOperator`).
        every: steps between estimates (``>= 1``).
        num_matvecs: Hessian-vector products per estimate (``>= 4``).
        seed: base seed of the random vectors.
        log: the trainer's ``log(dict)``.
    """

    def __init__(
        self, operator: Any, every: int, num_matvecs: int, seed: int, log: Callable[[dict[str, float]], None]
    ) -> None:
        self.operator, self.every, self.num_matvecs, self.seed, self.log = operator, every, num_matvecs, seed, log

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        step = int(state.global_step)
        if step % self.every:
            return
        estimate, error = hessian_trace(self.operator, self.num_matvecs, seed=self.seed + step)
        should_log = control.should_log  # Trainer.log clears it: the Trainer's own loss log at this step stays due
        self.log({"hessian_trace": estimate, "hessian_trace_stderr": error})
        control.should_log = should_log
