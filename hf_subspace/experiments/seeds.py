"""A multi-seed reference run in one figure: every branch's mean over the seeds with the band of their spread.

The seeds of a run leave their shared prefix at different steps when the switch follows the χ_k EMA rule, so each
seed's curves are drawn thin, and the mean with its min–max band only over the steps every seed measured. The prefix
(steps before each seed's switch) is grey, as in :func:`~hf_subspace.experiments.plotting.summary_figure`; the χ_k
panel adds the prefix's χ_k EMA (the quantity the switch rule watches) as a dashed grey line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .plotting import PREFIX_COLOR, branch_style, prefix_label

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_seeds", "seeds_figure"]


def _points(
    curve: Sequence[Sequence[float]] | None, start: int | None = None, end: int | None = None
) -> dict[int, float]:
    out = {}
    for step, value in curve or []:
        s = int(step)
        if (start is None or s >= start) and (end is None or s <= end) and np.isfinite(value):
            out[s] = float(value)
    return out


def _band(ax: Any, per_seed: list[dict[int, float]], style: Any, label: str, log: bool) -> None:
    """Each seed thin; the mean and the min–max band on the steps every seed has."""
    for pts in per_seed:
        xs = sorted(pts)
        ax.plot(xs, [pts[x] for x in xs], color=style.color, ls=style.linestyle, lw=0.6, alpha=0.5)
    common = sorted(set.intersection(*(set(p) for p in per_seed))) if per_seed else []
    if not common:
        return
    vals = np.array([[p[x] for x in common] for p in per_seed])
    center = np.exp(np.log(np.clip(vals, 1e-12, None)).mean(0)) if log else vals.mean(0)
    ax.fill_between(common, vals.min(0), vals.max(0), color=style.color, alpha=0.18, lw=0)
    every = max(1, len(common) // 8)
    ax.plot(common, center, color=style.color, ls=style.linestyle, lw=1.8, marker=style.marker, markevery=every,
            label=f"{label} (mean of {len(per_seed)})")  # fmt: skip


def seeds_figure(summaries: Sequence[Mapping[str, Any]]) -> Figure:
    """Loss (log scale) and χ_k of every branch over the seeds of one run (see the module docstring)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12.0, 4.6))
    ax_loss, ax_chi = fig.subplots(1, 2)
    first = summaries[0]
    names = list(first.get("runs") or {})
    for which, ax, key in ((0, ax_loss, "loss_curve"), (1, ax_chi, "chi_k_curve")):
        prefix_seeds = []
        for s in summaries:
            run = next(iter((s.get("runs") or {}).values()))
            prefix_seeds.append(_points(run.get(key), end=int(s["switch_step"])))
        _band(ax, prefix_seeds, branch_style("prefix"), f"{prefix_label(first)} prefix", which == 0)
        for name in names:
            per = [_points((s["runs"].get(name) or {}).get(key), start=int(s["switch_step"])) for s in summaries]
            _band(ax, [p for p in per if p], branch_style(name, names, first["runs"][name]), name, which == 0)
        if which == 1:
            emas = [
                _points(((next(iter(s["runs"].values())).get("curves") or {}).get("chi_k_full_grad_ema")),
                        end=int(s["switch_step"]))
                for s in summaries
            ]  # fmt: skip
            for i, pts in enumerate(p for p in emas if p):
                xs = sorted(pts)
                ax.plot(xs, [pts[x] for x in xs], color=PREFIX_COLOR, ls="--", lw=1.0,
                        label="χ_k EMA (switch rule)" if i == 0 else None)  # fmt: skip
    switches = sorted({int(s["switch_step"]) for s in summaries})
    for ax in (ax_loss, ax_chi):
        for x in switches:
            ax.axvline(x, color="0.8", lw=0.8, zorder=0)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("loss over the Hessian set")
    ax_chi.set_ylabel("χ_k of the full-batch gradient")
    ax_chi.set_ylim(-0.02, 1.02)
    ax_loss.legend(fontsize=7)
    ax_chi.legend(fontsize=7, loc="lower right")
    seeds = [str(s.get("seed", i)) for i, s in enumerate(summaries)]
    fig.suptitle(
        f"{first.get('name', first.get('recipe'))}: {len(summaries)} seeds (switch at step "
        f"{', '.join(map(str, switches))}); mean and min–max band"
        + ("" if seeds == [str(i) for i in range(len(seeds))] else f"; seeds {', '.join(seeds)}"),
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def plot_seeds(summaries: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write :func:`seeds_figure` to ``path`` (PNG); returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = seeds_figure(summaries)
    FigureCanvasAgg(fig)
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path
