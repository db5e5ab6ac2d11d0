"""Checks and buffers of one training step: non-finite values named by their step, reused parameter copies."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch

__all__ = ["copy_into", "finite_values", "step_context"]


@contextlib.contextmanager
def step_context(step: int, what: str) -> Iterator[None]:
    """Re-raise a `FloatingPointError` from the Hessian with the training step and what was being computed."""
    try:
        yield
    except FloatingPointError as err:
        raise FloatingPointError(
            f"SubspaceTrainer: {what} at step {step} hit a non-finite value ({err}). Training stops before step "
            f"{step}'s update is applied or saved."
        ) from err


def finite_values(coeffs: torch.Tensor, step: int) -> list[float]:
    """The k coefficients Vᵀ Δ as floats (one device sync), checked: they are NaN or inf whenever any entry of Δ is
    (NaN · 0 = NaN), so a diverged update is caught before the Trainer can save it."""
    values = coeffs.tolist()
    if not all(math.isfinite(v) for v in values):
        raise FloatingPointError(
            f"SubspaceTrainer: the parameter update at step {step} is not finite (NaN or inf); training stops before "
            "it is saved. Lower the learning rate or check the data."
        )
    return values


def copy_into(buffer: list[torch.Tensor] | None, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``params`` copied into ``buffer`` (reused when shapes, dtypes and devices match; else freshly allocated)."""
    if (
        buffer is None
        or len(buffer) != len(params)
        or any(b.shape != p.shape or b.dtype != p.dtype or b.device != p.device for b, p in zip(buffer, params))
    ):
        return [p.detach().clone() for p in params]
    with torch.no_grad():
        torch._foreach_copy_(buffer, [p.detach() for p in params])
    return buffer
