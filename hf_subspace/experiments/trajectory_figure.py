"""The toy valley's figure: 2-D parameter trajectories of each branch over the loss contours, and each coordinate
against the step (:func:`plot_trajectory_2d`; the styles of :func:`~hf_subspace.experiments.plotting.branch_style`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .plotting import _blank_figure, _markevery, _save, _to_numpy, branch_style

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_trajectory_2d", "trajectory_figure"]


def _zigzags(points: np.ndarray, span: float) -> bool:
    """Whether a path crosses θ₁ = 0 back and forth (SGD bouncing across the valley) by over 1e-3 × ``span``."""
    big = points[np.abs(points[:, 0]) > 1e-3 * span, 0]  # rounding noise around 0 is no bounce
    return int(np.count_nonzero(np.sign(big[1:]) * np.sign(big[:-1]) < 0)) >= 3


def _zigzag_inset(ax: Any, paths: Mapping[str, np.ndarray], modes: Sequence[str], steps: int = 12) -> None:
    """An inset with the first ``steps`` steps of each path that bounces across the valley, every step connected:
    the path itself, which at full length only shows its two envelopes (one per side of the valley)."""
    inset = ax.inset_axes((0.64, 0.16, 0.34, 0.3))
    for mode, points in paths.items():
        style = branch_style(mode, modes)
        inset.plot(points[: steps + 1, 0], points[: steps + 1, 1], color=style.color, lw=0.8, marker=".", ms=4)
        inset.plot(*points[0], marker="o", color=style.color, ms=5, mfc="white", mew=1.0, ls="none")
    inset.tick_params(labelsize="xx-small")
    inset.set_title(f"first {steps} steps, every step", fontsize="x-small")
    inset.grid(True, alpha=0.3)


def _scale_note(ax: Any, xlim: tuple[float, float], ylim: tuple[float, float]) -> None:
    """Say by how much the axes are out of scale when the two ranges differ by more than 2×."""
    x_span, y_span = float(xlim[1]) - float(xlim[0]), float(ylim[1]) - float(ylim[0])
    if x_span > 0 and y_span > 0 and not 0.5 <= x_span / y_span <= 2:
        ax.text(
            0.02, 0.02, f"axes not to scale: the horizontal range ({x_span:.3g}) is {y_span / x_span:.3g}× smaller\n"
            f"than the vertical one ({y_span:.3g})" if x_span < y_span else
            f"axes not to scale: the vertical range ({y_span:.3g}) is {x_span / y_span:.3g}× smaller\n"
            f"than the horizontal one ({x_span:.3g})",
            transform=ax.transAxes, fontsize="x-small", color="0.3", va="bottom",
            bbox={"facecolor": "white", "edgecolor": "0.8", "alpha": 0.9},
        )  # fmt: skip


def _split_steps(traj: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """``[T, 2]`` (θ₁, θ₂) or ``[T, 3]`` (step, θ₁, θ₂) → (steps or None, ``[T, 2]`` points)."""
    if traj.ndim == 2 and traj.shape[1] == 3:
        return traj[:, 0], traj[:, 1:]
    return None, traj.reshape(-1, 2)


def trajectory_figure(
    loss_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    trajectories: Mapping[str, np.ndarray | Sequence[Sequence[float]]],
    xlim: tuple[float, float],
    ylim: tuple[float, float],
    title: str | None = None,
    resolution: int = 200,
    *,
    xlabel: str = r"$\theta_1$",
    ylabel: str = r"$\theta_2$",
) -> Figure:
    """The figure of :func:`plot_trajectory_2d`."""
    fig = _blank_figure((11.0, 5.0))
    grid = fig.add_gridspec(2, 2, width_ratios=(1.15, 1.0))
    ax = fig.add_subplot(grid[:, 0])
    xs = np.linspace(float(xlim[0]), float(xlim[1]), resolution)
    ys = np.linspace(float(ylim[0]), float(ylim[1]), resolution)
    X, Y = np.meshgrid(xs, ys)
    Z = np.broadcast_to(np.asarray(loss_fn(X, Y), dtype=float), X.shape)
    finite = Z[np.isfinite(Z)]
    positive = finite[finite > 0]
    if positive.size and positive.max() > positive.min():
        levels = np.geomspace(positive.min(), positive.max(), 20)
        ax.contour(X, Y, np.where(Z > 0, Z, positive.min()), levels=levels, cmap="Greys_r", linewidths=0.6,
                   alpha=0.6)  # fmt: skip
    elif finite.size and finite.max() > finite.min():
        ax.contour(X, Y, Z, levels=20, cmap="Greys_r", linewidths=0.6, alpha=0.6)

    modes = list(trajectories)
    timed: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    bouncing: dict[str, np.ndarray] = {}
    for mode in modes:
        traj = _to_numpy(trajectories[mode])
        if traj.size == 0:
            continue
        steps, points = _split_steps(traj)
        style = branch_style(mode, modes)
        # One dot per step, no connecting line: minibatch SGD crosses the valley at every step, and lines between
        # its iterates would paint a solid wedge; the inset draws its first steps connected.
        ax.plot(points[:, 0], points[:, 1], color=style.color, ls="none", marker=".", ms=2.0, alpha=0.6)
        if mode != "prefix" and _zigzags(points, abs(float(xlim[1]) - float(xlim[0]))):
            bouncing[mode] = points
        ax.plot(*points[0], marker="o", color=style.color, ms=7, mfc="white", mew=1.5, clip_on=False, zorder=4)
        ax.plot(*points[-1], marker="*", color=style.color, ms=13, mec="black", mew=0.5, clip_on=False, zorder=5,
                ls="none", label=mode)  # fmt: skip
        if steps is not None:
            timed[mode] = (steps, points)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    _scale_note(ax, xlim, ylim)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", title="○ start, ★ end", title_fontsize="small", loc="upper left")
    ax.set_title("loss contours and paths")
    if bouncing:
        _zigzag_inset(ax, bouncing, modes)

    ax_y = fig.add_subplot(grid[0, 1])
    ax_x = fig.add_subplot(grid[1, 1], sharex=ax_y)
    for index, (mode, (steps, points)) in enumerate(timed.items()):
        style = branch_style(mode, modes)
        # Across the valley: the size of the offset, max(|θ₁|) over two consecutive steps (one SGD bounce).
        offset = np.abs(points[:, 0])
        offset = np.maximum(offset, np.concatenate([offset[:1], offset[:-1]]))
        for axis, values in ((ax_y, points[:, 1]), (ax_x, offset)):
            axis.plot(steps, values, color=style.color, ls=style.linestyle, lw=1.6, label=mode,
                      marker=style.marker if mode != "prefix" else "", ms=4, mfc="white",
                      markevery=_markevery(steps.size, index, len(timed)))  # fmt: skip
    if timed:
        ax_y.set_ylabel(ylabel, fontsize="small")
        ax_x.set_ylabel(f"|{xlabel.split(' (')[0]}|, max over 2 steps", fontsize="small")
        ax_x.set_yscale("symlog", linthresh=1e-4)
        ax_x.set_xlabel("step")
        ax_y.set_title("each coordinate over the steps")
        ax_y.legend(fontsize="x-small", ncol=2)
        for axis in (ax_x, ax_y):
            axis.grid(True, alpha=0.3)
    else:
        ax_y.set_axis_off()
        ax_x.set_axis_off()
    fig.suptitle(title or "loss contours and trajectories")
    return fig


def plot_trajectory_2d(
    loss_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    trajectories: Mapping[str, np.ndarray | Sequence[Sequence[float]]],
    path: str | Path,
    xlim: tuple[float, float],
    ylim: tuple[float, float],
    title: str | None = None,
    resolution: int = 200,
    *,
    xlabel: str = r"$\theta_1$",
    ylabel: str = r"$\theta_2$",
) -> Path:
    """Loss contours of a 2-D problem with each branch's parameter path on top, and each coordinate over the steps.

    Left: contour levels log-spaced between the smallest positive and the largest loss on the grid (the narrow
    valley of the paper's toy quadratic), each path thin and translucent (minibatch SGD crosses the valley at every
    step: its dots at full length form two envelopes, so an inset draws the first steps of such a path connected),
    starting at a circle and ending at a star (markers are never clipped). When the two ranges differ by more than 2×, a note says by how much the axes are out of scale. Right (for trajectories with steps): each coordinate
    against the step, in the branch styles of :func:`~hf_subspace.experiments.plotting.branch_style`.

    Args:
        loss_fn: vectorised loss ``(X, Y) -> Z`` on meshgrid arrays.
        trajectories: ``{mode: [T, 2] array of (θ₁, θ₂)}`` or ``[T, 3]`` of ``(step, θ₁, θ₂)``.
        path: where to write the PNG.
        xlim: ``(x_min, x_max)`` of the contour grid.
        ylim: ``(y_min, y_max)`` of the contour grid.
        title: figure title.
        resolution: grid points per axis.
        xlabel: label of θ₁ (e.g. its curvature).
        ylabel: label of θ₂.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    figure = trajectory_figure(loss_fn, trajectories, xlim, ylim, title, resolution, xlabel=xlabel, ylabel=ylabel)
    return _save(figure, path)
