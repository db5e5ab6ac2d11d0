"""What the subspace schedule tells the user: a long refresh's progress, what refreshes cost, and why."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from . import distributed
from .operator import LinearOperator, reuse_scope

if TYPE_CHECKING:
    from .hessian import HessianOperator
    from .training_args import SubspaceTrainingArguments

__all__ = ["CostNotes", "ProgressOperator", "alignment_interval", "first_refresh_note"]

logger = logging.getLogger("hf_subspace.callback")

#: A refresh shows its own bar once it has run this many seconds (short ones stay silent).
BAR_DELAY_S = 5.0


class ProgressOperator(LinearOperator):
    """``operator`` unchanged, with a tqdm bar counting its Hessian-vector products (on the main process).

    The bar appears only after ``delay`` seconds, shows products done / ``expected`` and an ETA (without
    ``expected``: the rate). Use as a context manager so the bar closes.

    Args:
        operator: the operator the eigensolver would get (``dim``, ``dtype``, ``device``, ``matmat``).
        expected: products the refresh is expected to take (the last refresh's count), or None.
        desc: the bar's label.
        delay: seconds before the bar appears.
    """

    def __init__(self, operator: Any, expected: int | None, desc: str, delay: float = BAR_DELAY_S) -> None:
        self.operator = operator
        self.dim = int(operator.dim)
        self.checks_finite = bool(getattr(operator, "checks_finite", False))
        self.is_distributed = bool(getattr(operator, "is_distributed", False))
        self.bar: Any = None
        if distributed.is_main_process():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=expected, desc=desc, unit="HVP", delay=delay, leave=False)

    @property
    def dtype(self) -> torch.dtype:  # type: ignore[override]
        return self.operator.dtype

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return self.operator.device

    # Split solver vectors: the wrapped operator's rows and reduction (whole vectors: the base defaults).
    @property
    def local_dim(self) -> int:
        return int(getattr(self.operator, "local_dim", self.dim))

    @property
    def row_start(self) -> int:
        return int(getattr(self.operator, "row_start", 0))

    @property
    def local_rows(self) -> slice | torch.Tensor:
        return getattr(self.operator, "local_rows", slice(0, self.dim))

    @property
    def shards_vectors(self) -> bool:
        return bool(getattr(self.operator, "shards_vectors", False))

    @property
    def rows(self) -> Any:
        return getattr(self.operator, "rows", None)

    def reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        reduce = getattr(self.operator, "reduce_", None)
        return reduce(tensor) if reduce is not None else tensor

    def reusing_graphs(self) -> contextlib.AbstractContextManager[Any]:
        return reuse_scope(self.operator)

    def matmat(self, block: torch.Tensor) -> torch.Tensor:
        out = self.operator.matmat(block)
        if self.bar is not None:
            self.bar.update(int(block.shape[1]))
        return out

    def __enter__(self) -> ProgressOperator:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def first_refresh_note(seconds: float, products: int, num_samples: int, batch_size: int | None) -> str:
    """The message after a first refresh that took long: its cost and the options that trade it."""
    each = seconds / max(1, products)
    return (
        f"SubspaceTrainer: the first basis refresh took {seconds:.0f} s ({products} Hessian-vector products over "
        f"{num_samples} samples, {each:.2f} s each); later refreshes cost about as much per product. "
        f"hessian_num_samples (now {num_samples}) trades the cost of each product against the sampling error of the "
        f"Hessian; hessian_batch_size (now {batch_size}) trades memory against speed per product."
    )


class CostNotes:
    """Warn once per run when the tolerance cannot be certified, and once when it costs a refresh at every step."""

    def __init__(self, streak: int = 5) -> None:
        self.streak = streak  # consecutive 1-step intervals that make refreshing "every step"
        self.every_step = 0
        self.warned: set[str] = set()
        self.last_products: int | None = None  # the last refresh's Hessian-vector products (the next bar's total)
        self.last_seconds = 0.0

    def after_solve(self, seconds: float, products: int, operator: HessianOperator) -> None:
        """Record a refresh's cost; the first one of a run, when it took long, says what it cost and what trades it."""
        if self.last_products is None and seconds > BAR_DELAY_S:
            batch = max(operator.batch_sizes, default=None)
            logger.warning(first_refresh_note(seconds, products, operator.num_samples, batch))
        self.last_products, self.last_seconds = products, seconds

    def after_refresh(self, step: int, out: Mapping[str, float | None], tol: float | None) -> None:
        """``out``: the refresh's metrics (``eigengap``, ``tolerance_unreachable``, ``refresh_interval``, ...)."""
        gap = out.get("eigengap")
        if out.get("tolerance_unreachable") and "unreachable" not in self.warned:
            self.warned.add("unreachable")
            logger.warning(
                "SubspaceTrainer: at step %d the basis cannot be certified within subspace_basis_tol=%s (λ_k − λ_k+1 "
                "= %s, the refresh's own error bound %s): such steps are logged with subspace/tolerance_unreachable "
                "= 1. Choose subspace_k at a clear gap of the spectrum, or raise subspace_basis_tol.",
                step,
                tol,
                gap,
                out.get("basis_error_estimate"),
            )
        self.every_step = self.every_step + 1 if out.get("refresh_interval") == 1.0 else 0
        if self.every_step >= self.streak and "expensive" not in self.warned:
            self.warned.add("expensive")
            logger.warning(
                "SubspaceTrainer: subspace_basis_tol=%s needs a basis refresh at every step (step %d: λ_k − λ_k+1 = "
                "%s, the basis moved %s since the last refresh), which costs as much as subspace_refresh_steps=1. A "
                "larger subspace_basis_tol, or subspace_k at a wider gap, refreshes less often.",
                tol,
                step,
                gap,
                out.get("basis_drift"),
            )


def alignment_interval(args: SubspaceTrainingArguments, max_steps: int, logging_steps: int) -> int:
    """Steps between alignment measurements for this run (0: none); warns when projection can never start.

    ``logging_steps`` is the Trainer's resolved value (``state.logging_steps``: a ratio such as 0.25 of the run
    becomes a number of steps).
    """
    every = args.alignment_steps
    if args.subspace_alignment_steps is None and 0 < args.logging_steps < 1:
        every = int(logging_steps)
    if args.subspace_mode != "none" and max_steps > 0 and args.subspace_start_step >= max_steps:
        # Projection can never start: spend Hessian products only on measurements the user asked for.
        if args.subspace_alignment_steps is None:
            every = 0
        logger.warning(
            "subspace_start_step=%d is not below max_steps=%d: subspace_mode=%r never projects an update. %s "
            "Lower subspace_start_step (or raise max_steps) to project.",
            args.subspace_start_step,
            max_steps,
            args.subspace_mode,
            "No Hessian is computed (set subspace_alignment_steps to measure alignment)."
            if every == 0
            else f"Alignment is still measured every {every} steps.",
        )
    return every
