"""``hf-subspace spectrum --trace --density``: the trace and the spectral density beside the top-k, and their figure.

The options themselves are declared in :mod:`hf_subspace.cli` (which stays free of heavy imports)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from ..spectral import hessian_trace, spectral_density
from .plotting import _new_figure, _save

__all__ = ["plot_density", "spectral_record"]


def plot_density(
    grid: np.ndarray,
    density: np.ndarray,
    path: str | Path,
    top: list[float] | None = None,
    k: int | None = None,
    log: bool = False,
    title: str | None = None,
) -> Path:
    """The smoothed eigenvalue density (fraction of eigenvalues per unit), the top-``k`` eigenvalues marked.

    Args:
        grid, density: ``[n]`` arrays from :func:`~hf_subspace.spectral.spectral_density`.
        path: where to write the PNG.
        top: the computed top eigenvalues (vertical ticks; the first ``k`` in red).
        k: size of the dominant subspace.
        log: logarithmic density axis (the outliers carry a weight of about ``1/d`` each: invisible on a linear one).
        title: figure title.
    """
    fig, axes = _new_figure()
    ax = axes[0]
    floor = 1e-6 * max(float(density.max()), 1e-300)  # the Gaussian tails far from any node are not information
    shown = np.maximum(density, floor) if log else density
    ax.plot(grid, shown, color="tab:blue", lw=1.2, label="density (SLQ)")
    if log:
        ax.set_yscale("log")
        ax.set_ylim(bottom=floor)
    for i, value in enumerate(top or []):
        ax.axvline(value, color="tab:red" if k is None or i < k else "tab:gray", lw=0.6, alpha=0.7)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (fraction of eigenvalues per unit)")
    ax.set_title(title or "Hessian spectral density")
    ax.legend(loc="upper right")
    return _save(fig, path)


def spectral_record(operator: Any, ns: argparse.Namespace, out: Path, top: list[float], title: str) -> dict[str, Any]:
    """Trace and/or density of ``operator`` as asked in ``ns``; writes ``spectral_density.png`` (and ``.npz``)."""
    record: dict[str, Any] = {}
    if ns.trace:
        before = getattr(operator, "num_matvecs", 0)
        estimate, error = hessian_trace(operator, ns.trace_matvecs, seed=ns.seed)
        record["trace"] = {"estimate": estimate, "standard_error": error, "method": "hutch++"}
        record["trace"]["hessian_vector_products"] = getattr(operator, "num_matvecs", 0) - before
    if ns.density:
        grid, density = spectral_density(operator, ns.density_probes, ns.density_steps, seed=ns.seed)
        np.savez(out / "spectral_density.npz", grid=grid, density=density)
        figure = plot_density(grid, density, out / "spectral_density.png", top, ns.k, ns.log_density, title)
        mean = float(np.trapezoid(grid * density, grid))
        record["density"] = {
            "probes": ns.density_probes,
            "lanczos_steps": ns.density_steps,
            "mean_eigenvalue": mean,
            "file": "spectral_density.npz",
            "figure": figure.name,
        }
    return record
