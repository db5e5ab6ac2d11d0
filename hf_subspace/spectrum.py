"""One-call Hessian spectrum of a model: operator + eigensolver."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from .eigensolvers import EigenResult, top_eigenpairs
from .hessian import HessianOperator, LossFn

__all__ = ["hessian_eigenpairs"]


def hessian_eigenpairs(
    model: nn.Module,
    batches: Iterable[Any],
    k: int,
    loss_fn: LossFn | None = None,
    *,
    parameter_filter: str | None = None,
    distributed: bool | None = None,
    **solver_options: Any,
) -> EigenResult:
    """Top-k eigenpairs (largest algebraic eigenvalues) of the training-loss Hessian of ``model``.

    Args:
        model: the model; its trainable parameters span the space.
        batches: the Hessian dataset (this rank's shard under ``torch.distributed``).
        k: number of eigenpairs.
        loss_fn: ``loss_fn(model, batch) -> scalar mean loss``; default ``model(**batch).loss``.
        parameter_filter: regular expression selecting parameters by name.
        distributed: reduce across processes (default: when a process group is initialised).
        **solver_options: passed to :func:`~hf_subspace.eigensolvers.top_eigenpairs` (``method``, ``init``,
            ``tol``, ``max_iters``, ``seed``, ``progress``, ...).
    """
    operator = HessianOperator(model, batches, loss_fn, parameter_filter=parameter_filter, distributed=distributed)
    return top_eigenpairs(operator, k, **solver_options)
