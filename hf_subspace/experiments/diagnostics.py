"""The paper's other measurements from an experiment's logs: sharpness, spectrum gap and effective learning rates.

:func:`metric_curves` keeps, per branch, the curves of every logged eigenvalue, the eigengap and the effective learning
rates (the shared prefix, then the branch), so ``summary.json`` answers more than loss and χ_k:

- **edge of stability** (Cohen et al. 2021; the paper's Sec. 5): under full-batch GD with learning rate η the sharpness
  λ₁ rises to about 2/η and hovers there. :func:`plot_sharpness` draws λ₁ of every branch against 2/η;
- **spectrum gap** (the paper's Figure 15): the top-k eigenvalues stay well above the next k
  (``subspace_extra_eigenvalues = k``). :func:`plot_spectrum_curves` draws both groups along training and
  :func:`spectrum_gap` summarises λ_k / λ_{k+1};
- **effective learning rates** (the paper's Table 1): :func:`effective_lr_means` averages η_dom and η_bulk
  (:func:`hf_subspace.metrics.effective_learning_rates`) over the measurements of the first steps.

:func:`extra_figures` writes the figures that the summary's data supports (``sharpness.png`` after a GD prefix or
with GD branches, ``spectrum.png`` with extra eigenvalues).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..metrics import METRIC_PREFIX

__all__ = [
    "CURVE_PATTERN",
    "EXTRA_FIGURES",
    "effective_lr_means",
    "extra_figures",
    "metric_curves",
    "plot_sharpness",
    "plot_spectrum_curves",
    "sharpness_summary",
    "spectrum_gap",
]

CURVE_PATTERN = re.compile(
    r"^(eigenvalue_(top|next)_\d+|eigengap|effective_lr_(dominant|bulk)|chi_k_full_grad_ema|hvps_total"
    r"|basis_error_estimate)$"
)
"""Logged metrics (names without ``subspace/``) kept as curves in ``summary.json``."""
EXTRA_FIGURES: tuple[str, ...] = ("sharpness.png", "spectrum.png")
"""Figures :func:`extra_figures` may write beside ``figure.png``."""


def _collect(history: Sequence[Mapping[str, Any]]) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for entry in history:
        if "step" not in entry:
            continue
        step = int(entry["step"])
        for key, value in entry.items():
            if not key.startswith(METRIC_PREFIX):
                continue
            name = key[len(METRIC_PREFIX) :]
            if CURVE_PATTERN.match(name) and isinstance(value, int | float) and math.isfinite(value):
                out.setdefault(name, {})[step] = float(value)
    return out


def metric_curves(
    prefix_history: Sequence[Mapping[str, Any]], branch_history: Sequence[Mapping[str, Any]], switch_step: int
) -> dict[str, list[list[float]]]:
    """Curves ``{metric: [[step, value], ...]}`` of the metrics matching :data:`CURVE_PATTERN`.

    The shared prefix supplies the steps before ``switch_step`` and the branch those from it on (the branch's own
    value wins at the switch), as for the loss curve. Steps are those of the log records (a refresh between two
    measurements is logged with the next record).
    """
    before, after = _collect(prefix_history), _collect(branch_history)
    curves: dict[str, list[list[float]]] = {}
    for name in sorted(set(before) | set(after)):
        merged = {s: v for s, v in before.get(name, {}).items() if s < switch_step}
        merged.update({s: v for s, v in after.get(name, {}).items() if s >= switch_step})
        if merged:
            curves[name] = [[s, merged[s]] for s in sorted(merged)]
    return curves


def _series(run: Mapping[str, Any], name: str) -> tuple[np.ndarray, np.ndarray]:
    points = (run.get("curves") or {}).get(name) or []
    if not points:
        return np.empty(0), np.empty(0)
    arr = np.asarray(points, dtype=float)
    return arr[:, 0], arr[:, 1]


def _eigen_names(run: Mapping[str, Any], group: str) -> list[str]:
    return sorted(n for n in (run.get("curves") or {}) if n.startswith(f"eigenvalue_{group}_"))


# ----------------------------------------------------------------------------------------------- numbers


def sharpness_summary(summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """λ₁ against 2/η: ``{"two_over_lr", "max_prefix", "at_switch", "first_step_90", "per_branch": {mode: mean λ₁
    after the switch}}``, or ``None`` without a λ₁ curve or learning rate.

    ``max_prefix`` is the largest λ₁ measured in the prefix after step 0 and ``first_step_90`` the first measured
    step after step 0 with λ₁ ≥ 0.9 · 2/η (``None`` if never): step 0 is the initialisation, whose sharpness is not
    the optimizer's doing (the CIFAR-10 CNN starts at λ₁ = 105 and falls to 6 within 25 steps at lr 0.05).
    """
    lr = summary.get("learning_rate")
    runs: Mapping[str, Mapping[str, Any]] = summary.get("runs") or {}
    if not lr or not runs:
        return None
    threshold = 2.0 / float(lr)
    switch = int(summary.get("switch_step") or 0)
    first = next(iter(runs.values()))
    steps, values = _series(first, "eigenvalue_top_01")
    if not steps.size:
        return None
    pre = (steps <= switch) & (steps > 0)
    reached = steps[(values >= 0.9 * threshold) & (steps > 0)]
    per_branch = {}
    for mode, run in runs.items():
        s, v = _series(run, "eigenvalue_top_01")
        keep = s > switch
        per_branch[mode] = float(v[keep].mean()) if keep.any() else None
    return {
        "two_over_lr": threshold,
        "max_prefix": float(values[pre].max()) if pre.any() else None,
        "at_switch": float(values[steps == switch][0]) if (steps == switch).any() else None,
        "first_step_90": int(reached[0]) if reached.size else None,
        "per_branch": per_branch,
    }


def spectrum_gap(run: Mapping[str, Any]) -> dict[str, float] | None:
    """Mean over measurements of λ_k, λ_{k+1} and λ_k / λ_{k+1} (only where λ_{k+1} > 0), from a run's curves with
    extra eigenvalues; ``None`` without them."""
    top, nxt = _eigen_names(run, "top"), _eigen_names(run, "next")
    if not top or not nxt:
        return None
    s_k, v_k = _series(run, top[-1])
    s_n, v_n = _series(run, nxt[0])
    common, i_k, i_n = np.intersect1d(s_k, s_n, return_indices=True)
    if not common.size:
        return None
    lam_k, lam_n = v_k[i_k], v_n[i_n]
    pos = lam_n > 0
    return {
        "lambda_k": float(lam_k.mean()),
        "lambda_k_plus_1": float(lam_n.mean()),
        "ratio": float((lam_k[pos] / lam_n[pos]).mean()) if pos.any() else math.inf,
        "min_ratio": float((lam_k[pos] / lam_n[pos]).min()) if pos.any() else math.inf,
        "measurements": int(common.size),
    }


def effective_lr_means(run: Mapping[str, Any], until_step: int, from_step: int = 0) -> dict[str, float] | None:
    """Means of η_dom and η_bulk over the measurements at steps in ``[from_step, until_step)`` (the paper's Table 1:
    the first 1,000 steps), with their count; ``None`` when none was measured there."""
    s_d, v_d = _series(run, "effective_lr_dominant")
    s_b, v_b = _series(run, "effective_lr_bulk")
    keep_d = (s_d >= from_step) & (s_d < until_step)
    keep_b = (s_b >= from_step) & (s_b < until_step)
    if not keep_d.any() or not keep_b.any():
        return None
    return {
        "dominant": float(v_d[keep_d].mean()),
        "bulk": float(v_b[keep_b].mean()),
        "measurements": int(min(keep_d.sum(), keep_b.sum())),
    }


# ----------------------------------------------------------------------------------------------- figures


def plot_sharpness(summary: Mapping[str, Any], path: str | Path) -> Path:
    """λ₁ of the training-loss Hessian against the step for the prefix and every branch, with the line 2/η.

    Args:
        summary: ``summary.json`` with per-branch ``curves["eigenvalue_top_01"]`` and ``learning_rate``.
        path: the PNG to write.
    """
    from .plotting import PREFIX_COLOR, _new_figure, _save, branch_style

    runs: Mapping[str, Mapping[str, Any]] = summary.get("runs") or {}
    switch = int(summary.get("switch_step") or 0)
    lr = float(summary.get("learning_rate") or 0.0)
    fig, (ax,) = _new_figure(size=(7.0, 4.5))
    prefix_name = "GD" if summary.get("prefix_optimizer") == "gd" else "SGD"
    drawn_prefix = False
    for mode, run in runs.items():
        steps, values = _series(run, "eigenvalue_top_01")
        if not steps.size:
            continue
        if not drawn_prefix and (steps <= switch).sum() >= 2:
            pre = steps <= switch
            ax.plot(steps[pre], values[pre], color=PREFIX_COLOR, lw=3.0, label=f"shared {prefix_name} prefix")
            drawn_prefix = True
        after = steps >= switch
        style = branch_style(mode, list(runs), run)
        ax.plot(steps[after], values[after], color=style.color, ls=style.linestyle, marker=style.marker, ms=4,
                mfc="white", lw=1.6, label=mode)  # fmt: skip
    if lr > 0:
        ax.axhline(2.0 / lr, color="0.2", ls="--", lw=1.2, label=f"2/η = {2.0 / lr:.4g}")
    ax.axvline(switch, color="0.4", ls=(0, (2, 3)), lw=1.0, label=f"switch (step {switch})")
    ax.set_xlabel("step")
    ax.set_ylabel(r"sharpness $\lambda_1$ of the training-loss Hessian")
    top = max([2.0 / lr if lr > 0 else 0.0] + [float(np.max(_series(r, "eigenvalue_top_01")[1], initial=0.0))
                                                for r in runs.values()])  # fmt: skip
    ax.set_ylim(0.0, 1.12 * top if top > 0 else None)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="best")  # λ₁ may rise to 2/η (edge of stability) or stay far below it
    ax.set_title(f"{summary.get('name') or summary.get('recipe', '')}: sharpness λ₁ against 2/η (edge of stability)")
    return _save(fig, path)


def plot_spectrum_curves(summary: Mapping[str, Any], path: str | Path, mode: str | None = None) -> Path:
    """The top-k (red) and next-k (blue) Hessian eigenvalues of one branch along training (the paper's Figure 15).

    Args:
        summary: ``summary.json`` whose branch has ``eigenvalue_top_*`` and ``eigenvalue_next_*`` curves.
        path: the PNG to write.
        mode: the branch (default: ``sgd`` if present, else the first with extra eigenvalues).

    Raises:
        ValueError: when no branch has extra eigenvalue curves.
    """
    from .plotting import _new_figure, _save

    runs: Mapping[str, Mapping[str, Any]] = summary.get("runs") or {}
    candidates = [m for m in runs if _eigen_names(runs[m], "next")]
    if mode is None:
        mode = "sgd" if "sgd" in candidates else (candidates[0] if candidates else None)
    if mode is None or mode not in candidates:
        raise ValueError("no branch has eigenvalues beyond the top k (run with --subspace_extra_eigenvalues k)")
    run = runs[mode]
    fig, (ax,) = _new_figure(size=(7.0, 4.5))
    top, nxt = _eigen_names(run, "top"), _eigen_names(run, "next")
    for names, color, label in ((top, "tab:red", f"top {len(top)}"), (nxt, "tab:blue", f"next {len(nxt)}")):
        for i, name in enumerate(names):
            steps, values = _series(run, name)
            ax.plot(steps, values, color=color, lw=1.1, alpha=0.85, label=label if i == 0 else None)
    switch = summary.get("switch_step")
    if switch is not None:
        ax.axvline(float(switch), color="0.4", ls=(0, (2, 3)), lw=1.0, label=f"switch (step {switch})")
    ax.set_xlabel("step")
    ax.set_ylabel(r"Hessian eigenvalue $\lambda_i$")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    k = summary.get("k")
    ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
    title = summary.get("name") or summary.get("recipe", "")
    ax.set_title(f"{title} ({mode}): top {k} and next {len(nxt)} Hessian eigenvalues")
    return _save(fig, path)


def extra_figures(summary: Mapping[str, Any], output_dir: str | Path) -> list[Path]:
    """Write the figures the summary supports: ``sharpness.png`` when the prefix or a branch is full-batch GD and λ₁
    changes along the run, ``spectrum.png`` when a branch has eigenvalues beyond the top k. Returns the paths written."""
    out = Path(output_dir)
    runs: Mapping[str, Mapping[str, Any]] = summary.get("runs") or {}
    written = []
    full_batch = summary.get("prefix_optimizer") == "gd" or any(r.get("full_batch") for r in runs.values())
    sharpness = [_series(r, "eigenvalue_top_01")[1] for r in runs.values()]
    values = np.concatenate([v for v in sharpness if v.size]) if any(v.size for v in sharpness) else np.zeros(0)
    # A constant λ₁ (a quadratic's Hessian, e.g. the toy valley) makes a flat line: nothing to show.
    varies = values.size > 1 and float(np.ptp(values)) > 1e-3 * max(float(np.abs(values).max()), 1e-12)
    if full_batch and varies:
        written.append(plot_sharpness(summary, out / "sharpness.png"))
    if any(_eigen_names(r, "next") for r in runs.values()):
        written.append(plot_spectrum_curves(summary, out / "spectrum.png"))
    return written
