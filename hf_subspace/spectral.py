r"""The spectrum beyond the top k: the trace (Hutch++ / Hutchinson) and the spectral density (stochastic Lanczos
quadrature) of a symmetric operator, e.g. a :class:`~hf_subspace.HessianOperator`.

Both touch the operator only through ``matmat([d, m]) -> [d, m]`` and draw every random vector on the CPU from a
seeded ``torch.Generator``, so under several processes (``operator.is_distributed``) every rank uses the same vectors
and takes the same decisions; the results are broadcast from rank 0.

* :func:`hessian_trace`: Hutchinson's estimator :math:`\frac1m \sum_j z_j^\top H z_j` (Rademacher :math:`z_j`;
  Hutchinson, 1990) or Hutch++ (Meyer, Musco, Musco & Woodruff, 2021): a third of the products sketch the top of the
  range, :math:`Q = \mathrm{orth}(H S)`, whose trace :math:`\mathrm{tr}(Q^\top H Q)` is exact, and Hutchinson
  estimates the trace of the rest, :math:`(I - QQ^\top) H (I - QQ^\top)`; on a spectrum with a few outliers (a
  Hessian) its variance is far smaller.
* :func:`spectral_density`: for each unit probe :math:`v`, ``lanczos_steps`` Lanczos steps give
  :math:`T = S \Theta S^\top`; the Gauss quadrature :math:`\sum_j s_{1j}^2 \delta(t - \theta_j)` approximates the
  spectral measure :math:`\sum_i (v^\top u_i)^2 \delta(t - \lambda_i)`, whose expectation is the density of
  eigenvalues divided by :math:`d`. Averaged over probes and smoothed by a Gaussian of width ``sigma``
  (Lin, Saad & Yang, 2016; Ghorbani, Krishnan & Xiao, 2019).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from . import distributed
from .eigensolvers._common import CountingOperator, gram_f64, new_block
from .eigensolvers.lanczos import _norm
from .operator import reuse_scope

__all__ = ["hessian_trace", "spectral_density"]

TRACE_METHODS = ("hutch++", "hutchinson")


def _geometry(operator: Any) -> tuple[int, torch.dtype, torch.device, bool]:
    if not callable(getattr(operator, "matmat", None)) or not hasattr(operator, "dim"):
        raise TypeError(f"operator must provide `dim`, `dtype`, `device` and `matmat`, got {type(operator).__name__}")
    dtype = getattr(operator, "dtype", torch.float32)
    device = torch.device(getattr(operator, "device", "cpu"))
    return int(operator.dim), dtype, device, bool(getattr(operator, "is_distributed", False))


def _rademacher(generator: torch.Generator, dim: int, m: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``[dim, m]`` of independent ±1 entries drawn on the CPU (identical on every rank for the same generator)."""
    signs = torch.randint(0, 2, (m, dim), generator=generator, dtype=torch.int8)
    return (signs.to(dtype) * 2 - 1).to(device).T


def _quadratic_forms(z: torch.Tensor, hz: torch.Tensor) -> torch.Tensor:
    r"""``z_j^\top (Hz)_j`` for every column (float64 ``[m]``, on the CPU), accumulated in float64."""
    return torch.stack([gram_f64(z[:, j : j + 1], hz[:, j : j + 1])[0, 0] for j in range(int(z.shape[1]))])


def _mean_and_error(samples: torch.Tensor) -> tuple[float, float]:
    """Sample mean and its standard error (``nan`` error for one sample)."""
    n = int(samples.numel())
    mean = float(samples.mean())
    return mean, float(samples.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("nan")


def hessian_trace(
    operator: Any, num_matvecs: int = 100, *, seed: int = 0, method: str = "hutch++"
) -> tuple[float, float]:
    r"""Stochastic estimate of :math:`\mathrm{tr}(H)` and its standard error.

    Args:
        operator: symmetric operator (``dim``, ``dtype``, ``device``, ``matmat``; ``is_distributed`` optional: then
            every rank must call this with the same arguments, in lock step).
        num_matvecs: operator columns to spend (the cost: one Hessian-vector product each). Hutch++ needs at least 4
            (a third sketch, a third for the sketch's exact trace, the rest for Hutchinson on the remainder).
        seed: seed of the CPU generator of the Rademacher vectors.
        method: ``"hutch++"`` (default) or ``"hutchinson"``.

    Returns:
        ``(estimate, standard_error)``, floats in the operator's units (a Hessian: loss per parameter squared). The
        error is the sample standard deviation of the Hutchinson terms over :math:`\sqrt{n}` (Hutch++'s sketched part
        is exact); ``nan`` if only one Hutchinson term was drawn.

    Raises:
        ValueError: on an unknown ``method`` or too few ``num_matvecs``.
    """
    dim, dtype, device, is_distributed = _geometry(operator)
    if method not in TRACE_METHODS:
        raise ValueError(f"method={method!r} is not a trace estimator; valid: {', '.join(TRACE_METHODS)}")
    minimum = 4 if method == "hutch++" else 1
    if num_matvecs < minimum:
        raise ValueError(f"num_matvecs={num_matvecs} must be at least {minimum} for method={method!r}")
    counter = CountingOperator(operator)
    generator = torch.Generator().manual_seed(seed)
    exact_part = 0.0
    with reuse_scope(operator):
        if method == "hutchinson":
            z = _rademacher(generator, dim, num_matvecs, dtype, device)
            samples = _quadratic_forms(z, counter(z))
        else:
            sketch = min(max(1, num_matvecs // 3), dim)
            q = counter(_rademacher(generator, dim, sketch, dtype, device))
            q = torch.linalg.qr(q.to(torch.float64)).Q.to(dtype)
            exact_part = float(_quadratic_forms(q, counter(q)).sum())
            z = _rademacher(generator, dim, num_matvecs - 2 * sketch, dtype, device)
            z = z - q @ (q.T @ z)  # (I - QQ^T) z: Hutchinson on the part of H outside the sketch
            samples = _quadratic_forms(z, counter(z))
    estimate, error = _mean_and_error(samples)
    out = torch.tensor([exact_part + estimate, error], dtype=torch.float64)
    if is_distributed:
        distributed.broadcast(out)
    return float(out[0]), float(out[1])


def _reorthogonalize(w: torch.Tensor, basis: torch.Tensor) -> float:
    r"""Remove from ``w`` ([d]) its components along the orthonormal columns of ``basis`` ([d, j]), twice, in the
    operator dtype; returns the coefficient along the last column (the Lanczos :math:`\alpha_j`).

    The quadrature needs the Lanczos vectors orthogonal only to well below the smoothing width: two classical
    Gram-Schmidt passes in float32 leave components of about :math:`\sqrt{d}\,\epsilon`, and cost a tenth of the
    float64-accumulated passes the eigensolvers use (which must tell apart eigenvalues 1e-3 apart).
    """
    last = 0.0
    for _ in range(2):
        coef = basis.T @ w
        w.addmv_(basis, coef, alpha=-1)
        last += float(coef[-1])
    return last


def _lanczos_quadrature(
    counter: CountingOperator, v: torch.Tensor, steps: int, is_distributed: bool
) -> tuple[np.ndarray, np.ndarray]:
    r"""Nodes :math:`\theta_j` and weights :math:`s_{1j}^2` of ``steps`` Lanczos steps from the unit vector ``v``."""
    dim = int(v.shape[0])
    basis = new_block(dim, steps, v.dtype, v.device)
    basis[:, 0].copy_(v)
    alpha, beta = [], []
    eps = torch.finfo(v.dtype).eps
    for j in range(steps):
        w = counter(basis[:, j : j + 1])[:, 0]
        alpha.append(_reorthogonalize(w, basis[:, : j + 1]))  # full reorthogonalisation: no spurious copies
        b = _norm(w)
        done = j + 1 == steps or b <= 10 * eps * max(abs(alpha[-1]), 1e-300)
        if distributed.broadcast_flag(done) if is_distributed else done:
            break
        beta.append(b)
        basis[:, j + 1].copy_(w).div_(b)
    t = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
    nodes, vectors = np.linalg.eigh(t)
    return nodes, vectors[0] ** 2


def spectral_density(
    operator: Any,
    num_probes: int = 10,
    lanczos_steps: int = 80,
    *,
    seed: int = 0,
    sigma: float | None = None,
    num_points: int = 1000,
    return_quadrature: bool = False,
) -> Any:
    r"""Smoothed eigenvalue density of a symmetric operator by stochastic Lanczos quadrature.

    Args:
        operator: symmetric operator (``dim``, ``dtype``, ``device``, ``matmat``; ``is_distributed`` optional).
        num_probes: random unit start vectors (Rademacher / sqrt(d)); the cost is ``num_probes * lanczos_steps``
            operator columns.
        lanczos_steps: Lanczos steps per probe (memory: this many d-sized vectors at a time).
        seed: seed of the CPU generator of the probes.
        sigma: width of the Gaussian kernel, in eigenvalue units; default 1 % of the range of the nodes.
        num_points: grid points; the grid spans the nodes plus ``5 sigma`` on either side.
        return_quadrature: also return the nodes and weights (``[num_probes, steps]`` arrays, weights summing to 1
            per probe).

    Returns:
        ``(grid, density)``: float64 NumPy arrays ``[num_points]``; ``density`` integrates to 1 over the grid (it is
        the fraction of eigenvalues per unit of eigenvalue) and its mean :math:`\int t\,\phi(t)\,dt` estimates
        :math:`\mathrm{tr}(H)/d`. With ``return_quadrature``: ``(grid, density, nodes, weights)``.

    Raises:
        ValueError: if ``num_probes``, ``lanczos_steps``, ``num_points`` or ``sigma`` is not positive.
    """
    dim, dtype, device, is_distributed = _geometry(operator)
    if num_probes < 1 or lanczos_steps < 1 or num_points < 2:
        raise ValueError("num_probes and lanczos_steps must be >= 1 and num_points >= 2")
    if sigma is not None and not sigma > 0:
        raise ValueError(f"sigma={sigma} must be positive (the Gaussian kernel's width)")
    steps = min(lanczos_steps, dim)
    counter = CountingOperator(operator)
    generator = torch.Generator().manual_seed(seed)
    nodes = np.full((num_probes, steps), np.nan)
    weights = np.zeros((num_probes, steps))
    with reuse_scope(operator):
        for p in range(num_probes):
            v = _rademacher(generator, dim, 1, dtype, device)[:, 0] / math.sqrt(dim)
            theta, tau = _lanczos_quadrature(counter, v, steps, is_distributed)
            nodes[p, : theta.size], weights[p, : theta.size] = theta, tau
    packed = torch.as_tensor(np.stack([nodes, weights]))
    if is_distributed:
        distributed.broadcast(packed)
    nodes, weights = packed[0].numpy(), packed[1].numpy()
    low, high = float(np.nanmin(nodes)), float(np.nanmax(nodes))
    width = sigma if sigma is not None else max(0.01 * (high - low), 1e-12 * max(abs(low), abs(high), 1.0))
    grid = np.linspace(low - 5 * width, high + 5 * width, num_points)
    ok = ~np.isnan(nodes)
    kernel = np.exp(-0.5 * ((grid[:, None] - nodes[ok][None, :]) / width) ** 2) / (width * math.sqrt(2 * math.pi))
    density = kernel @ weights[ok] / num_probes
    if return_quadrature:
        return grid, density, nodes, weights
    return grid, density
