"""Figures for the paper's experiments: loss / χ_k curves per branch and Hessian spectra (the toy valley's 2-D
trajectories: :mod:`~hf_subspace.experiments.trajectory_figure`).

Every ``plot_*`` function writes one PNG and returns its path; the matching ``*_figure`` function returns the
:class:`matplotlib.figure.Figure` itself (for notebooks and for tests that check what is drawn). Matplotlib is
imported lazily, and each figure is a bare ``Figure`` rendered by its own ``Agg`` canvas: pyplot is never imported
and the global backend is never changed, so these functions work on headless servers and leave a notebook's backend
alone.

Every branch has a fixed colour, line style and marker, so lines stay distinguishable where they overlap (Bulk-SGD
drawn on top of SGD): the unprojected minibatch branch (``sgd``, or the optimizer's name such as ``adamw``) black,
solid, circles; ``gd`` green, dotted, diamonds; ``dominant`` red, dashed, triangles; ``bulk`` blue, dash-dotted,
squares; other names the next entry of a fixed cycle. The shared prefix before the switch is drawn once, in grey.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

__all__ = [
    "PREFIX_COLOR",
    "BranchStyle",
    "branch_color",
    "branch_style",
    "plot_eigenvalue_curves",
    "plot_spectrum",
    "plot_summary",
    "prefix_label",
    "spectrum_figure",
    "summary_figure",
]

DPI = 120
PREFIX_COLOR = "0.6"
"""Colour of the shared prefix (drawn once, before the switch)."""


@dataclass(frozen=True)
class BranchStyle:
    """How a branch is drawn: matplotlib colour, line style and marker."""

    color: str
    linestyle: Any
    marker: str


_FIXED_STYLES: dict[str, BranchStyle] = {
    "sgd": BranchStyle("black", "-", "o"),
    "gd": BranchStyle("tab:green", ":", "D"),
    "dominant": BranchStyle("tab:red", "--", "^"),
    "bulk": BranchStyle("tab:blue", "-.", "s"),
    "prefix": BranchStyle(PREFIX_COLOR, "-", ""),
}
_ALIASES = {"dom": "dominant", "none": "sgd"}
_CYCLE = (
    BranchStyle("tab:orange", (0, (5, 1, 1, 1, 1, 1)), "v"),
    BranchStyle("tab:purple", (0, (1, 1)), "P"),
    BranchStyle("tab:brown", (0, (6, 2)), "X"),
    BranchStyle("tab:pink", (0, (3, 1, 1, 1)), "<"),
    BranchStyle("tab:olive", "-", ">"),
    BranchStyle("tab:cyan", "--", "h"),
)
_LOSS_FLOOR = 1e-12
_MARKERS_PER_LINE = 8


def _canonical(mode: str, run: Mapping[str, Any] | None = None) -> str:
    """The style key of a branch: from the run's ``subspace_mode``/``full_batch`` record when given, else its name
    (case-insensitive, the part before the first ``-``/``_``/space, so ``"Dom-SGD"`` is ``dominant``)."""
    if run:
        sub, full = run.get("subspace_mode"), bool(run.get("full_batch"))
        if sub == "none":
            return "gd" if full else "sgd"
        if sub in ("dominant", "bulk") and not full:
            return str(sub)
    name = mode.strip().lower()
    if name in _FIXED_STYLES:
        return name
    for sep in ("-", "_", " "):
        name = name.split(sep)[0]
    return _ALIASES.get(name, name)


def branch_style(mode: str, others: Sequence[str] = (), run: Mapping[str, Any] | None = None) -> BranchStyle:
    """The colour, line style and marker of a branch.

    Args:
        mode: the branch name (``sgd``, ``dominant``, ``bulk``, ``gd``, ``prefix`` or any other).
        others: all branch names of the figure in order; an unknown name gets the cycle entry of its rank among the
            unknown ones, so styles are stable within a figure.
        run: the branch's record in ``summary.json``; its ``subspace_mode`` and ``full_batch`` decide the style when
            the name does not (e.g. an unprojected ``adamw`` branch is drawn like ``sgd``).
    """
    key = _canonical(mode, run)
    if key in _FIXED_STYLES:
        return _FIXED_STYLES[key]
    unknown = [m for m in dict.fromkeys(others) if _canonical(m) not in _FIXED_STYLES]
    index = unknown.index(mode) if mode in unknown else len(unknown)
    return _CYCLE[index % len(_CYCLE)]


def branch_color(mode: str, others: Sequence[str] = ()) -> str:
    """The colour of a branch (:func:`branch_style`)."""
    return branch_style(mode, others).color


def _new_figure(ncols: int = 1, size: tuple[float, float] = (6.0, 4.5)) -> tuple[Figure, Any]:
    """A pyplot-free figure with an Agg canvas (no global backend switch, nothing to close)."""
    # A fresh matplotlib cache directory logs "building the font cache" at import: not a user's concern.
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1]), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _blank_figure(size: tuple[float, float]) -> Figure:
    """A pyplot-free figure without axes (:func:`_new_figure`)."""
    fig, _ = _new_figure(size=size)
    fig.clear()
    return fig


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


def _markevery(n: int, index: int, count: int) -> tuple[int, int]:
    """About :data:`_MARKERS_PER_LINE` markers on a line of ``n`` points, shifted per branch so they do not overlap."""
    every = max(1, n // _MARKERS_PER_LINE)
    return (min(n - 1, (index * every) // max(count, 1)) if n else 0, every)


_OPTIMIZER_WORDS = {
    "sgd": "SGD",
    "sam": "SAM",
    "asam": "ASAM",
    "adamw": "AdamW",
    "adam": "Adam",
    "nesterov": "Nesterov",
}


def prefix_label(summary: Mapping[str, Any]) -> str:
    """The shared prefix's optimizer, in words, from a ``summary.json``: ``"SGD"``, ``"GD"``, ``"AdamW"``,
    ``"momentum"``, ``"SAM-SGD"``, ``"full-batch AdamW"``, ...

    The prefix runs the experiment's optimizer (``summary["optimizer_label"]``; older summaries: derived from
    ``optimizer``, ``optim_args`` and ``sam_rho``) on minibatches, or on the full batch when
    ``summary["prefix_optimizer"] == "gd"`` (plain SGD on the full batch is ``"GD"``).
    """
    label = summary.get("optimizer_label")
    if not label:
        from .branches import optimizer_label

        label = optimizer_label(
            summary.get("optimizer") or "sgd",
            summary.get("optim_args"),
            float(summary.get("sam_rho") or 0.0),
            bool(summary.get("sam_adaptive", False)),
        )
    words = "-".join(_OPTIMIZER_WORDS.get(part, part) for part in str(label).split("-"))
    if summary.get("prefix_optimizer") == "gd":
        return "GD" if words == "SGD" else f"full-batch {words}"
    return words


def summary_figure(summary: Mapping[str, Any]) -> Figure:
    """The paper's Figure 1 as a :class:`~matplotlib.figure.Figure` (see :func:`plot_summary`)."""
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
    prefix_name = prefix_label(summary)

    for ax, curves in ((ax_loss, loss_curves), (ax_chi, chi_curves)):
        clip = (lambda v: np.maximum(v, floor)) if ax is ax_loss else (lambda v: np.clip(v, 0.0, 1.0))
        # The shared prefix (identical in every branch): once, neutral, from the first branch that has it.
        if switch is not None:
            for steps, values in curves.values():
                before = steps <= float(switch)
                if before.sum() >= 2:
                    ax.plot(steps[before], clip(values[before]), color=PREFIX_COLOR, ls="-", lw=3.0,
                            label=f"shared {prefix_name} prefix", zorder=1)  # fmt: skip
                    break
        for index, mode in enumerate(modes):
            steps, values = curves[mode]
            if switch is not None:
                keep = steps >= float(switch)
                steps, values = steps[keep], values[keep]
            if not steps.size:
                continue
            style = branch_style(mode, modes, runs[mode] or None)
            unprojected = _canonical(mode, runs[mode] or None) == "sgd"
            ax.plot(
                steps,
                clip(values),
                color=style.color,
                ls=style.linestyle,
                marker=style.marker,
                markevery=_markevery(steps.size, index, len(modes)),
                ms=5,
                mfc="white" if not unprojected else style.color,
                lw=2.2 if unprojected else 1.5,
                label=mode,
                zorder=2 if unprojected else 3,
            )

    # The prefix's χ_k EMA: the quantity the paper's switch rule watches (it fires at 0.95).
    first_run = next((run for run in runs.values() if run), None) or {}
    ema_steps, ema = _curve((first_run.get("curves") or {}).get("chi_k_full_grad_ema"))
    if switch is not None and ema_steps.size:
        before = ema_steps <= float(switch)
        rule = summary.get("switch_rule")
        by_rule = isinstance(rule, Mapping) and rule.get("rule") == "ema"
        ax_chi.plot(ema_steps[before], np.clip(ema[before], 0.0, 1.0), color="tab:purple", ls="--", lw=1.4, zorder=4,
                    label="χ_k EMA of the prefix" + (" (switch rule)" if by_rule else ""))  # fmt: skip

    if any(steps.size for steps, _ in loss_curves.values()):
        ax_loss.set_yscale("log")
        _plain_log_labels(ax_loss)
    else:
        _empty_note(ax_loss, "no loss curves")
    if not any(steps.size for steps, _ in chi_curves.values()):
        _empty_note(ax_chi, "no χ_k curves")
    ax_chi.set_ylim(-0.02, 1.02)

    k = summary.get("k")
    for ax in (ax_loss, ax_chi):
        if switch is not None:
            ax.axvline(float(switch), color="0.4", ls=(0, (2, 3)), lw=1.0, label=f"switch (step {switch})")
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
    title = str(summary.get("name") or summary.get("recipe") or "")
    details = [f"k = {k}"] if k is not None else []
    if summary.get("dataset"):
        details.insert(0, str(summary["dataset"]))
    if prefix_name != "SGD":
        details.append(f"{prefix_name} prefix")
    fig.suptitle(f"{title}  ({', '.join(details)})" if details else title)
    return fig


def plot_summary(summary: Mapping[str, Any], path: str | Path) -> Path:
    """The paper's Figure 1: training loss and χ_k of the full-batch gradient per branch.

    Left panel: full training loss vs. step on a log scale; right panel: χ_k vs. step in [0, 1], with the prefix's
    χ_k EMA (``curves["chi_k_full_grad_ema"]``, what the paper's switch rule watches) dashed. The shared prefix
    (steps up to ``summary["switch_step"]``, the same in every branch) is drawn once in grey; from the switch on,
    each branch has its own colour, line style and marker (:func:`branch_style`), so a branch drawn exactly on top
    of another stays visible. Both panels mark the switch with a vertical line. Non-positive losses are clipped to
    a small floor for the log scale; branches without a χ_k curve are left out of the right panel (a note says so
    if none has one).

    Args:
        summary: ``{"recipe": str, "k": int, "switch_step": int, "runs": {mode: {"loss_curve": [[step, loss], ...],
            "chi_k_curve": [[step, chi], ...], "subspace_mode": str, "full_batch": bool}}}`` and optionally
            ``"name"`` (the title, default the recipe), ``"prefix_optimizer"``; missing keys are tolerated.
        path: where to write the PNG (parent folders are created).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    return _save(summary_figure(summary), path)


def _empty_note(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.5")


def spectrum_figure(
    eigenvalues: Sequence[float] | np.ndarray | torch.Tensor, k: int | None = None, title: str | None = None
) -> Figure:
    """The stem plot of :func:`plot_spectrum` as a :class:`~matplotlib.figure.Figure`."""
    from matplotlib.ticker import MaxNLocator

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
        ax.set_xlim(0.4, n + 0.6)
    else:
        _empty_note(ax, "no eigenvalues")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10], min_n_ticks=1))
    ax.set_xlabel("index i (eigenvalues in descending order)")
    ax.set_ylabel(r"eigenvalue $\lambda_i$ of the training-loss Hessian")
    ax.grid(True, alpha=0.3)
    ax.set_title(title or "Hessian spectrum")
    return fig


def plot_spectrum(
    eigenvalues: Sequence[float] | np.ndarray | torch.Tensor,
    path: str | Path,
    k: int | None = None,
    title: str | None = None,
) -> Path:
    """Stem plot of the top Hessian eigenvalues by (integer) index, the first ``k`` highlighted.

    A few large outliers followed by a bulk near zero is the low-rank structure the dominant subspace captures.

    Args:
        eigenvalues: eigenvalues (any order; they are sorted descending).
        path: where to write the PNG.
        k: size of the dominant subspace; indices ``≤ k`` are drawn in red, the rest in blue, with a separator.
        title: figure title (default: ``"Hessian spectrum"``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    return _save(spectrum_figure(eigenvalues, k, title), path)


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


def _plain_log_labels(ax: Any) -> None:
    """Plain tick labels on a log axis (``2.25``, not ``2.25×10⁰``; matplotlib labels minor ticks in scientific
    notation when the data span less than a decade)."""
    from matplotlib.ticker import FuncFormatter

    plain, (low, high) = FuncFormatter(lambda value, _: f"{value:.3g}"), ax.get_ylim()
    ax.yaxis.set_major_formatter(plain)
    if low > 0 and high / low < 10:  # under a decade: the minor ticks carry the labels
        ax.yaxis.set_minor_formatter(plain)
