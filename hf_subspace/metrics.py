"""Diagnostics of projected training: alignment EMA, effective learning rates, TensorBoard layout.

Effective learning rates (Song, Ahn & Yun 2025, Sec. 4) measure how far an update ``Δθ`` moves along the dominant and
the bulk part of the full-batch gradient ``g``:

.. math::

    \\eta_{\\mathrm{dom}} = -\\frac{\\langle \\Delta\\theta, P g \\rangle}{\\lVert P g \\rVert^2}, \\qquad
    \\eta_{\\mathrm{bulk}} = -\\frac{\\langle \\Delta\\theta, (I - P) g \\rangle}{\\lVert (I - P) g \\rVert^2}.

For plain gradient descent with learning rate η both equal η; Dom-SGD has ``η_bulk = 0`` and Bulk-SGD ``η_dom = 0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .subspace import SubspaceBasis

__all__ = ["METRIC_PREFIX", "AlignmentEMA", "custom_scalar_layout", "effective_learning_rates"]

METRIC_PREFIX = "subspace/"


@dataclass
class AlignmentEMA:
    """Exponential moving average of χ_k, used to switch projection on once alignment has stabilised.

    ``value ← decay · value + (1 − decay) · χ`` with the first observation taken as is (no bias towards 0).
    """

    decay: float = 0.9
    value: float | None = None
    count: int = 0

    def update(self, chi: float) -> float:
        self.value = chi if self.value is None else self.decay * self.value + (1.0 - self.decay) * chi
        self.count += 1
        return self.value

    def state_dict(self) -> dict[str, float | int | None]:
        return {"decay": self.decay, "value": self.value, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.value, self.count = float(state["decay"]), state["value"], int(state["count"])


def effective_learning_rates(
    basis: SubspaceBasis, update: Sequence[torch.Tensor] | torch.Tensor, gradient: torch.Tensor
) -> tuple[float, float]:
    """``(η_dom, η_bulk)`` of an update with respect to the full-batch gradient (NaN where a part of g is 0).

    Args:
        basis: the dominant subspace.
        update: the applied parameter change Δθ (flat, or per parameter in the basis' order).
        gradient: the flat full-batch gradient g at the parameters the update started from.
    """
    flat_update = update if isinstance(update, torch.Tensor) else torch.cat([u.reshape(-1) for u in update])
    flat_update = flat_update.to(basis.vectors.dtype)
    g = gradient.to(basis.vectors.dtype)
    g_dom = basis.project_dominant(g)
    g_bulk = g - g_dom
    rates = []
    for part in (g_dom, g_bulk):
        denom = float(part.square().sum().item())
        rates.append(float("nan") if denom == 0.0 else -float(torch.dot(flat_update, part).item()) / denom)
    return rates[0], rates[1]


def custom_scalar_layout(prefix: str = "train/" + METRIC_PREFIX) -> dict[str, dict[str, list]]:
    """TensorBoard custom-scalars layout grouping the alignment curves, eigenvalues and solver cost.

    Tags are regular expressions over the names the Trainer's TensorBoard callback writes (it prefixes ``train/``).
    """
    p = prefix
    return {
        "Alignment χ_k": {
            "gradients and update": ["Multiline", [f"{p}chi_k_(minibatch_grad|full_grad|update)$"]],
            "full-gradient EMA": ["Multiline", [f"{p}chi_k_full_grad(_ema)?$"]],
        },
        "Hessian spectrum": {
            "top-k eigenvalues": ["Multiline", [f"{p}eigenvalue_top_\\d+$"]],
            "eigenvalues k+1..2k": ["Multiline", [f"{p}eigenvalue_next_\\d+$"]],
            "basis overlap with previous": ["Multiline", [f"{p}basis_overlap$"]],
        },
        "Effective learning rates": {
            "dominant vs bulk": ["Multiline", [f"{p}effective_lr_(dominant|bulk)$"]],
        },
        "Loss": {"full training loss": ["Multiline", [f"{p}full_train_loss$", "train/loss$"]]},
        "Eigensolver": {
            "Hessian-vector products": ["Multiline", [f"{p}solver_hvps$"]],
            "seconds": ["Multiline", [f"{p}solver_seconds$"]],
            "max residual": ["Multiline", [f"{p}solver_max_residual$"]],
        },
    }
