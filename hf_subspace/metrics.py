"""Diagnostics of projected training: alignment EMA, effective learning rates, TensorBoard layout.

Effective learning rates (Song, Ahn & Yun 2025, Sec. 4) measure how far an update ``Δθ`` moves along the dominant and
the bulk part of the full-batch gradient ``g``:

.. math::

    \\eta_{\\mathrm{dom}} = -\\frac{\\langle \\Delta\\theta, P g \\rangle}{\\lVert P g \\rVert^2}, \\qquad
    \\eta_{\\mathrm{bulk}} = -\\frac{\\langle \\Delta\\theta, (I - P) g \\rangle}{\\lVert (I - P) g \\rVert^2}.

For plain gradient descent with learning rate η both equal η; Dom-SGD has ``η_bulk = 0`` and Bulk-SGD ``η_dom = 0``.
They are negative when the update moves *up* that part of the full-batch gradient: the minibatch gradient's
dominant part often points against the full gradient's (SGD oscillates across the sharp valley), and momentum or
Adam carry earlier directions into the update.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .subspace import SubspaceBasis

__all__ = [
    "METRIC_DESCRIPTIONS",
    "METRIC_PREFIX",
    "AlignmentEMA",
    "custom_scalar_layout",
    "effective_learning_rates",
    "eigenvalue_tag",
    "tensorboard_writers",
    "write_settings",
    "write_tensorboard_header",
]

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
        gradient: the flat full-batch gradient g at the parameters the update started from (this process's rows
            when the basis is split across processes).
    """
    if isinstance(update, torch.Tensor):
        flat_update = update
    elif basis.rows is not None:  # a split basis: this process's rows of the update, like the gradient's
        flat_update = basis.rows.local_rows(update)
    else:
        flat_update = torch.cat([u.reshape(-1) for u in update])
    flat_update = flat_update.to(basis.vectors.dtype)
    g = gradient.to(basis.vectors.dtype)
    g_dom = basis.vectors @ basis.coefficients(g)  # P g (flat)
    g_bulk = g - g_dom
    parts = torch.stack([torch.stack([p.square().sum(), torch.dot(flat_update, p)]) for p in (g_dom, g_bulk)])
    (dom_sq, dom_dot), (bulk_sq, bulk_dot) = basis.reduce_(parts.to(torch.float64)).tolist()
    return (
        float("nan") if dom_sq == 0.0 else -dom_dot / dom_sq,
        float("nan") if bulk_sq == 0.0 else -bulk_dot / bulk_sq,
    )


def eigenvalue_tag(index: int, k: int, total: int) -> str:
    """Metric name of the ``index``-th eigenvalue (1-based) of ``total`` computed with a top-``k`` subspace.

    ``eigenvalue_top_01`` … ``eigenvalue_top_k`` for the subspace, ``eigenvalue_next_(k+1)`` … beyond it; the index
    is zero-padded to the width of ``total`` (at least 2) so the tags sort in TensorBoard.
    """
    width = max(2, len(str(total)))
    return f"eigenvalue_{'top' if index <= k else 'next'}_{index:0{width}d}"


#: Definitions of the logged metrics (Markdown), written to TensorBoard's text tab and quoted in the README.
METRIC_DESCRIPTIONS = """\
| metric | definition |
|---|---|
| `chi_k_minibatch_grad` | χ_k = ‖VVᵀg‖/‖g‖ of the minibatch gradient (mean over the logging window; a parameter without \
gradient counts as zero) |
| `chi_k_full_grad`, `_ema` | χ_k of the gradient over the Hessian dataset at the logged step, and its moving average |
| `chi_k_update` | χ_k of the applied parameter change (1 under Dom-SGD, 0 under Bulk-SGD by construction) |
| `eigenvalue_top_NN`, `eigenvalue_next_NN` | Hessian eigenvalues λ_1 ≥ λ_2 ≥ …, the top k and (with \
`subspace_extra_eigenvalues`) the next ones |
| `eigengap` | λ_k − λ_{k+1}: how well the dominant subspace is separated (≈ 0: the k-th vector is arbitrary) |
| `effective_lr_dominant` | η_dom = −⟨Δθ, Pg⟩ / ‖Pg‖², g the full-batch gradient, P = VVᵀ |
| `effective_lr_bulk` | η_bulk = −⟨Δθ, (I−P)g⟩ / ‖(I−P)g‖² |
| `basis_overlap` | ‖V_oldᵀV_new‖_F² / k at a refresh (1: same subspace) |
| `solver_*` | Hessian-vector products, seconds, largest residual ‖Hv − λv‖ and convergence of each refresh |
| `full_train_loss` | the training loss over the whole Hessian dataset at the logged step (the minibatch loss is `loss`) |
| `switch_step` | the step from which updates are projected (logged once, at that step) |
| `projecting` | 1 while updates are projected, 0 before the switch |
| `hvps_total` | Hessian-vector products of the run so far (refreshes, probes), a resumed run included |
| `basis_error_estimate` | with `subspace_basis_tol`: the estimated distance ‖P_used − P_exact‖₂ of the basis in use to the exact top-k eigenspace (a refresh's own Davis–Kahan bound, or a probe's calibrated estimate) |
| `basis_drift` | ‖P_old − P_new‖₂ at a refresh: how far the eigenspace moved since the previous refresh |
| `refresh_interval` | steps until the next planned refresh (certified tracking) |
| `tolerance_unreachable` | 1 at a refresh where `subspace_basis_tol` cannot be certified (no gap at λ_k, or the refresh's own bound above it) |

For gradient descent with learning rate η, η_dom = η_bulk = η. Dom-SGD has η_bulk = 0 and Bulk-SGD η_dom = 0. \
An effective learning rate is negative when the update climbs that part of the full-batch gradient: SGD's minibatch \
gradient often points across the sharp valley against the full gradient's dominant part, and momentum or Adam carry \
earlier directions into the update.
"""


def custom_scalar_layout(
    prefix: str = "train/" + METRIC_PREFIX, extra_eigenvalues: bool = False
) -> dict[str, dict[str, list]]:
    """TensorBoard custom-scalars layout grouping the alignment curves, eigenvalues and solver cost.

    Tags are regular expressions over the names the Trainer's TensorBoard callback writes (it prefixes ``train/``).
    The "eigenvalues k+1..2k" chart is included only with ``extra_eigenvalues`` (else it would stay empty).
    """
    p = prefix
    spectrum = {"top-k eigenvalues": ["Multiline", [f"{p}eigenvalue_top_\\d+$"]]}
    if extra_eigenvalues:
        spectrum["eigenvalues k+1..2k"] = ["Multiline", [f"{p}eigenvalue_next_\\d+$"]]
    spectrum["gap λ_k − λ_k+1"] = ["Multiline", [f"{p}eigengap$"]]
    spectrum["basis overlap with previous"] = ["Multiline", [f"{p}basis_overlap$"]]
    spectrum["basis error and drift"] = ["Multiline", [f"{p}basis_(error_estimate|drift)$"]]
    return {
        "Alignment χ_k": {
            "gradients and update": ["Multiline", [f"{p}chi_k_(minibatch_grad|full_grad|update)$"]],
            "full-gradient EMA": ["Multiline", [f"{p}chi_k_full_grad(_ema)?$"]],
        },
        "Hessian spectrum": spectrum,
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


def tensorboard_writers(callbacks: Iterable[Any]) -> list[Any]:
    """The open ``SummaryWriter`` of each `TensorBoardCallback` among a trainer's ``callback_handler.callbacks``."""
    from transformers.integrations import TensorBoardCallback

    return [
        cb.tb_writer
        for cb in callbacks
        if isinstance(cb, TensorBoardCallback) and getattr(cb, "tb_writer", None) is not None
    ]


def write_tensorboard_header(writer: Any, summary: dict[str, Any], extra_eigenvalues: bool) -> None:
    """Write the custom-scalars layout, the run's subspace settings and the metric definitions to a writer."""
    if hasattr(writer, "add_custom_scalars"):
        writer.add_custom_scalars(custom_scalar_layout(extra_eigenvalues=extra_eigenvalues))
    write_settings(writer, summary, 0)
    if hasattr(writer, "add_text"):
        writer.add_text("subspace/metric_definitions", METRIC_DESCRIPTIONS)


def write_settings(writer: Any, summary: dict[str, Any], step: int) -> None:
    """The run's subspace settings as JSON text at ``step`` (again at the switch, where ``switch_step`` is known)."""
    if hasattr(writer, "add_text"):
        writer.add_text("subspace/settings", json.dumps(summary, default=str), global_step=step)
