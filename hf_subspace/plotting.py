"""Figures for the paper's experiments: loss / χ_k curves per branch, Hessian spectra, and toy 2-D trajectories.

Every function writes one PNG and returns its path. Matplotlib is imported lazily, and each figure is a bare
:class:`matplotlib.figure.Figure` rendered by its own ``Agg`` canvas: pyplot is never imported and the global
backend is never changed, so these functions work on headless servers and leave a notebook's backend alone.

Branch colours are fixed so every figure agrees: ``sgd`` black, ``gd`` grey, ``dominant`` red, ``bulk`` blue; other
mode names take the next colour of a fixed cycle.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

__all__ = [
    "branch_color",
    "plot_eigenvalue_curves",
    "plot_spectrum",
    "plot_summary",
    "plot_trajectory_2d",
]

DPI = 120
_FIXED_COLORS = {
    "sgd": "black",
    "gd": "grey",
    "dominant": "tab:red",
    "dom": "tab:red",
    "bulk": "tab:blue",
}
_CYCLE = ("tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
_LOSS_FLOOR = 1e-12


def branch_color(mode: str, others: Sequence[str] = ()) -> str:
    """The colour of a branch: fixed for known modes (``sgd``/``gd``/``dominant``/``bulk``), else a cycle colour.

    Matching is case-insensitive and uses the part of the name before the first ``-``/``_``/space, so ``"Dom-SGD"``
    is red and ``"bulk_sgd"`` blue.

    Args:
        mode: the branch (mode) name.
        others: all mode names of the figure in order; an unknown mode gets the cycle colour of its rank among the
            unknown ones, so colours are stable within a figure.
    """
    key = _canonical(mode)
    if key in _FIXED_COLORS:
        return _FIXED_COLORS[key]
    unknown = [m for m in dict.fromkeys(others) if _canonical(m) not in _FIXED_COLORS]
    index = unknown.index(mode) if mode in unknown else len(unknown)
    return _CYCLE[index % len(_CYCLE)]


def _canonical(mode: str) -> str:
    name = mode.strip().lower()
    if name in _FIXED_COLORS:
        return name
    for sep in ("-", "_", " "):
        name = name.split(sep)[0]
    return name


def _new_figure(ncols: int = 1, size: tuple[float, float] = (6.0, 4.5)) -> tuple[Figure, Any]:
    """A pyplot-free figure with an Agg canvas (no global backend switch, nothing to close)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1]), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _curve(points: Any) -> tuple[np.ndarray, np.ndarray]:
    """``[[step, value], ...]`` → (steps, values) as float arrays, dropping malformed and non-finite rows."""
    if points is None:
        return np.empty(0), np.empty(0)
    rows = []
    for item in points:
        try:
            step, value = float(item[0]), float(item[1])
        except (TypeError, ValueError, IndexError):
            continue
        if math.isfinite(step) and math.isfinite(value):
            rows.append((step, value))
    if not rows:
        return np.empty(0), np.empty(0)
    arr = np.asarray(sorted(rows, key=lambda r: r[0]), dtype=float)
    return arr[:, 0], arr[:, 1]


def _to_numpy(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=float)


def plot_summary(summary: Mapping[str, Any], path: str | Path) -> Path:
    """The paper's Figure 1: training loss and χ_k of the full-batch gradient per branch.

    Left panel: full training loss vs. step on a log scale, one line per branch; right panel: χ_k vs. step in
    [0, 1]. Both panels mark ``summary["switch_step"]`` (where the branches leave the shared prefix) with a dashed
    vertical line. Non-positive losses are clipped to a small floor for the log scale; branches without a χ_k
    curve are left out of the right panel (a note says so if none has one).

    Args:
        summary: ``{"recipe": str, "k": int, "switch_step": int, "runs": {mode: {"loss_curve": [[step, loss], ...],
            "chi_k_curve": [[step, chi], ...], "loss_at_switch": float, "final_loss": float}}}``; missing keys are
            tolerated.
        path: where to write the PNG (parent folders are created).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    runs: Mapping[str, Any] = summary.get("runs") or {}
    modes = list(runs)
    fig, (ax_loss, ax_chi) = _new_figure(ncols=2)
    switch = summary.get("switch_step")

    loss_curves = {mode: _curve((runs[mode] or {}).get("loss_curve")) for mode in modes}
    chi_curves = {mode: _curve((runs[mode] or {}).get("chi_k_curve")) for mode in modes}
    # Non-positive losses are clipped to a floor a decade below the smallest positive one (log scale).
    positive = [loss[loss > 0] for _, loss in loss_curves.values()]
    positive = [p for p in positive if p.size]
    floor = min(float(p.min()) for p in positive) / 10 if positive else _LOSS_FLOOR

    for mode in modes:
        color = branch_color(mode, modes)
        for ax, (steps, values) in ((ax_loss, loss_curves[mode]), (ax_chi, chi_curves[mode])):
            if not steps.size:
                continue
            values = np.maximum(values, floor) if ax is ax_loss else np.clip(values, 0.0, 1.0)
            ax.plot(steps, values, "-", color=color, label=mode, lw=1.6, marker="." if steps.size < 3 else None)

    if any(steps.size for steps, _ in loss_curves.values()):
        ax_loss.set_yscale("log")
    else:
        _empty_note(ax_loss, "no loss curves")
    if not any(steps.size for steps, _ in chi_curves.values()):
        _empty_note(ax_chi, "no χ_k curves")
    ax_chi.set_ylim(-0.02, 1.02)

    k = summary.get("k")
    for ax in (ax_loss, ax_chi):
        if switch is not None:
            ax.axvline(float(switch), color="0.4", ls="--", lw=1.0, label=f"switch (step {switch})")
        ax.set_xlabel("step")
        ax.grid(True, which="major", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    # The loss is over the Hessian set: the full training loss unless hessian_num_samples took a subset.
    n_hessian, n_train = summary.get("hessian_num_samples"), summary.get("num_train")
    subset = isinstance(n_hessian, int) and isinstance(n_train, int) and n_hessian < n_train
    ax_loss.set_ylabel(f"training loss ({n_hessian}-example Hessian subset)" if subset else "full training loss")
    ax_chi.set_ylabel(rf"$\chi_{{{k if k is not None else 'k'}}}$ of the full-batch gradient")
    ax_loss.set_title("training loss")
    ax_chi.set_title("fraction of the gradient in the top-k eigenspace")
    recipe = summary.get("recipe", "")
    gd_prefix = ", GD prefix" if summary.get("prefix_optimizer") == "gd" else ""
    fig.suptitle(f"{recipe}  (k = {k}{gd_prefix})" if k is not None else f"{recipe}{gd_prefix}")
    return _save(fig, path)


def _empty_note(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.5")


def plot_spectrum(
    eigenvalues: Sequence[float] | np.ndarray | torch.Tensor,
    path: str | Path,
    k: int | None = None,
    title: str | None = None,
) -> Path:
    """Stem plot of the top Hessian eigenvalues by index, the first ``k`` highlighted.

    A few large outliers followed by a bulk near zero is the low-rank structure the dominant subspace captures.

    Args:
        eigenvalues: eigenvalues (any order; they are sorted descending).
        path: where to write the PNG.
        k: size of the dominant subspace; indices ``< k`` are drawn in red, the rest in blue, with a separator.
        title: figure title (default: ``"Hessian spectrum"``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    values = np.sort(_to_numpy(eigenvalues).ravel())[::-1]
    values = values[np.isfinite(values)]
    fig, (ax,) = _new_figure(size=(7.0, 4.5))
    n = values.size
    k_eff = n if k is None else max(0, min(int(k), n))
    idx = np.arange(1, n + 1)
    if n:
        for sl, color, label in (
            (slice(0, k_eff), "tab:red", f"top {k_eff} (dominant)" if k is not None else "eigenvalues"),
            (slice(k_eff, n), "tab:blue", "rest (bulk)"),
        ):
            if idx[sl].size:
                ax.vlines(idx[sl], 0, values[sl], color=color, lw=1.5)
                ax.plot(idx[sl], values[sl], "o", color=color, ms=4, label=label)
        if k is not None and 0 < k_eff < n:
            ax.axvline(k_eff + 0.5, color="0.4", ls="--", lw=1.0)
        ax.axhline(0.0, color="0.6", lw=0.8)
        ax.legend(fontsize="small")
    else:
        _empty_note(ax, "no eigenvalues")
    ax.set_xlabel("index i")
    ax.set_ylabel(r"$\lambda_i$")
    ax.grid(True, alpha=0.3)
    ax.set_title(title or "Hessian spectrum")
    return _save(fig, path)


def plot_eigenvalue_curves(
    steps: Sequence[float] | np.ndarray | torch.Tensor,
    eigenvalues: Sequence[Sequence[float]] | np.ndarray | torch.Tensor,
    path: str | Path,
    title: str | None = None,
    stability_threshold: float | None = None,
) -> Path:
    """The top eigenvalues over training: one line per eigenvalue index.

    Args:
        steps: ``[T]`` training steps.
        eigenvalues: ``[T, k]`` eigenvalues at those steps (a ``[T]`` array is one eigenvalue).
        path: where to write the PNG.
        title: figure title (default: ``"top Hessian eigenvalues"``).
        stability_threshold: optional horizontal reference line, e.g. ``2/η`` for the edge of stability.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: if ``steps`` and ``eigenvalues`` disagree in length.
    """
    x = _to_numpy(steps).ravel()
    y = _to_numpy(eigenvalues)
    if y.ndim == 1:
        y = y[:, None]
    if y.size == 0:
        y = y.reshape(x.size, 0)
    if y.shape[0] != x.size:
        raise ValueError(f"steps has {x.size} entries but eigenvalues has {y.shape[0]} rows (expected [T, k]).")
    fig, (ax,) = _new_figure(size=(7.0, 4.5))
    k = y.shape[1]
    if k and x.size:
        import matplotlib

        cmap = matplotlib.colormaps["viridis"]
        for i in range(k):
            ax.plot(
                x, y[:, i], color=cmap(i / max(k - 1, 1)), lw=1.4, label=rf"$\lambda_{{{i + 1}}}$" if k <= 10 else None
            )
        if k <= 10:
            ax.legend(fontsize="small", ncol=2)
    else:
        _empty_note(ax, "no eigenvalues")
    if stability_threshold is not None:
        ax.axhline(stability_threshold, color="0.3", ls="--", lw=1.0)
    ax.set_xlabel("step")
    ax.set_ylabel("eigenvalue")
    ax.grid(True, alpha=0.3)
    ax.set_title(title or "top Hessian eigenvalues")
    return _save(fig, path)


def plot_trajectory_2d(
    loss_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    trajectories: Mapping[str, np.ndarray | Sequence[Sequence[float]]],
    path: str | Path,
    xlim: tuple[float, float],
    ylim: tuple[float, float],
    title: str | None = None,
    resolution: int = 200,
) -> Path:
    """Loss contours of a 2-D problem with each branch's parameter trajectory on top.

    Contour levels are log-spaced between the smallest positive and the largest loss on the grid, which shows the
    narrow valley of the paper's toy quadratic. Each trajectory starts at a circle and ends at a star.

    Args:
        loss_fn: vectorised loss ``(X, Y) -> Z`` on meshgrid arrays.
        trajectories: ``{mode: [T, 2] array}``; colours follow :func:`branch_color`.
        path: where to write the PNG.
        xlim: ``(x_min, x_max)`` of the contour grid.
        ylim: ``(y_min, y_max)`` of the contour grid.
        title: figure title.
        resolution: grid points per axis.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    fig, (ax,) = _new_figure(size=(6.0, 5.0))
    xs = np.linspace(float(xlim[0]), float(xlim[1]), resolution)
    ys = np.linspace(float(ylim[0]), float(ylim[1]), resolution)
    X, Y = np.meshgrid(xs, ys)
    Z = np.asarray(loss_fn(X, Y), dtype=float)
    Z = np.broadcast_to(Z, X.shape)
    finite = Z[np.isfinite(Z)]
    positive = finite[finite > 0]
    if positive.size and positive.max() > positive.min():
        levels = np.geomspace(positive.min(), positive.max(), 20)
        ax.contour(X, Y, np.where(Z > 0, Z, positive.min()), levels=levels, cmap="Greys_r", linewidths=0.8,
                   alpha=0.8)  # fmt: skip
    elif finite.size and finite.max() > finite.min():
        ax.contour(X, Y, Z, levels=20, cmap="Greys_r", linewidths=0.8, alpha=0.8)

    modes = list(trajectories)
    for mode in modes:
        traj = _to_numpy(trajectories[mode])
        if traj.size == 0:
            continue
        traj = traj.reshape(-1, 2)
        color = branch_color(mode, modes)
        ax.plot(traj[:, 0], traj[:, 1], "-", color=color, lw=1.4, label=mode, alpha=0.9)
        ax.plot(*traj[0], "o", color=color, ms=6, mfc="white", mew=1.5)
        ax.plot(*traj[-1], "*", color=color, ms=12, mec="black", mew=0.5)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_xlabel(r"$\theta_1$")
    ax.set_ylabel(r"$\theta_2$")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", title="○ start, ★ end", title_fontsize="small")
    ax.set_title(title or "loss contours and trajectories")
    return _save(fig, path)
