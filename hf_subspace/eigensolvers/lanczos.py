r"""Lanczos with full reorthogonalisation for the largest algebraic eigenvalues.

After :math:`j+1` steps the Lanczos relation reads

.. math::
    H Q_j = Q_j T_j + \beta_j q_{j+1} e_j^\top,

with :math:`Q_j = [q_0, \dots, q_j]` orthonormal and :math:`T_j` tridiagonal (diagonal :math:`\alpha`,
off-diagonal :math:`\beta`). If :math:`T_j s_i = \theta_i s_i`, the Ritz pair :math:`(\theta_i, Q_j s_i)` has residual
norm exactly :math:`|\beta_j s_{j,i}|` (the last entry of :math:`s_i`), so convergence is tested without applying
:math:`H`. Each new vector is orthogonalised against the whole basis twice (classical Gram-Schmidt), which keeps
:math:`Q_j` orthonormal to working precision and rules out the spurious copies of plain Lanczos.

One step costs one operator application of one column, so this is the cheapest cold-start method in matvecs when
the top of the spectrum is separated; the basis costs :math:`d \times (\text{steps})` memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg
import torch

from ._common import CountingOperator, finalize, prepare, progress_bar, random_block, stop
from ._result import EigenResult

__all__ = ["lanczos"]


def _top_ritz(alpha: list[float], beta: list[float], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` eigenpairs of the tridiagonal matrix (float64), eigenvalues descending."""
    n = len(alpha)
    k = min(k, n)
    a = np.asarray(alpha, dtype=np.float64)
    if n == 1:
        return a.copy(), np.ones((1, 1))
    e = np.asarray(beta[: n - 1], dtype=np.float64)
    values, vectors = scipy.linalg.eigh_tridiagonal(a, e, select="i", select_range=(n - k, n - 1))
    return values[::-1].copy(), vectors[:, ::-1].copy()


def _orthogonalize(w: torch.Tensor, basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove the components of ``w`` ([d]) along the orthonormal columns of ``basis`` twice; return (w, coefs)."""
    coef = basis.T @ w
    w = w - basis @ coef
    coef2 = basis.T @ w
    return w - basis @ coef2, coef + coef2


def lanczos(
    operator: Any,
    k: int,
    *,
    init: torch.Tensor | None = None,
    tol: float | None = None,
    max_iters: int | None = None,
    seed: int = 0,
    progress: bool = False,
    check_every: int = 1,
) -> EigenResult:
    r"""Top-``k`` eigenpairs (largest algebraic) by Lanczos with full reorthogonalisation.

    Args:
        operator: symmetric operator (``dim``, ``dtype``, ``device``, ``matmat``; ``is_distributed`` optional).
        k: number of eigenpairs, ``1 <= k < d``.
        init: optional ``[d, m]`` block; the normalised sum of its columns is the start vector (a warm start
            towards the span of a previous basis). Default: a seeded Gaussian vector.
        tol: stop when :math:`\max_{i \le k} |\beta_j s_{j,i}| \le \mathrm{tol} \cdot \max_{i \le k} |\theta_i|`;
            default ``1e-6`` (float64) or ``1e-3`` (float32).
        max_iters: maximal number of Lanczos steps (= matvecs), capped at ``d``; default ``max(300, 20 k)``.
        seed: seed of the CPU generator for the start vector and for restarts after a breakdown.
        progress: show a tqdm bar (main process only).
        check_every: test convergence every this many steps once ``k`` steps are done (the test solves a small
            tridiagonal eigenproblem, negligible next to an operator application).

    Returns:
        :class:`EigenResult` with the Ritz vectors :math:`Q_j s_i` and the Lanczos residual estimates.
    """
    problem = prepare(operator, k, init, tol)
    if check_every < 1:
        raise ValueError(f"check_every={check_every} must be >= 1")
    if max_iters is not None and max_iters < 1:
        raise ValueError(f"max_iters={max_iters} must be >= 1")
    dim, dtype, device = problem.dim, problem.dtype, problem.device
    steps_cap = min(dim, max_iters if max_iters is not None else max(300, 20 * k))
    steps_cap = max(steps_cap, min(k + 1, dim))
    counter = CountingOperator(operator)
    generator = torch.Generator().manual_seed(seed)
    eps = torch.finfo(dtype).eps

    q = problem.init.sum(dim=1) if problem.init is not None else random_block(generator, dim, 1, dtype, device)[:, 0]
    if float(q.norm()) == 0.0:
        q = random_block(generator, dim, 1, dtype, device)[:, 0]
    # The basis grows by doubling, so a run that converges early never holds ``steps_cap`` vectors.
    basis = torch.empty(dim, min(steps_cap, max(2 * k + 20, 40)), dtype=dtype, device=device)
    basis[:, 0] = q / q.norm()
    alpha: list[float] = []
    beta: list[float] = []
    theta = np.zeros(0)
    s = np.zeros((0, 0))
    converged = False
    norm_estimate = 0.0
    bar = progress_bar(progress, steps_cap, f"lanczos k={k}")

    for j in range(steps_cap):
        w = counter(basis[:, j : j + 1])[:, 0]
        w, coef = _orthogonalize(w, basis[:, : j + 1])
        alpha.append(float(coef[j]))
        b = float(w.norm())
        beta.append(b)
        norm_estimate = max(norm_estimate, abs(alpha[-1]) + b + (beta[-2] if j > 0 else 0.0))
        n = j + 1
        last = n == steps_cap
        breakdown = b <= 10 * eps * max(norm_estimate, 1e-300) * np.sqrt(n)
        check = n >= k and ((n - k) % check_every == 0 or last or breakdown)
        if check:
            theta, s = _top_ritz(alpha, beta, k)
            scale = max(float(np.abs(theta).max()), 1e-300)
            est = np.abs(b * s[-1, :])
            converged = stop(bool(est.max() <= problem.tol * scale) or (breakdown and n == dim), problem)
            if bar is not None:
                bar.set_postfix(rel_residual=f"{est.max() / scale:.2e}", lam1=f"{theta[0]:.4g}")
        if bar is not None:
            bar.update(1)
        if converged or last:
            break
        if stop(breakdown, problem):
            # Invariant subspace found before the top k converged: continue from a fresh random direction.
            beta[-1] = 0.0
            w = random_block(generator, dim, 1, dtype, device)[:, 0]
            w, _ = _orthogonalize(w, basis[:, : j + 1])
            b = float(w.norm())
        if j + 1 == basis.shape[1]:
            grown = torch.empty(dim, min(steps_cap, 2 * basis.shape[1]), dtype=dtype, device=device)
            grown[:, : j + 1] = basis[:, : j + 1]
            basis = grown
        basis[:, j + 1] = w / b

    n = len(alpha)
    if s.shape[0] != n:  # the last step was not a check step (only when n < k, i.e. d tiny): solve now
        theta, s = _top_ritz(alpha, beta, k)
    s_t = torch.as_tensor(s, dtype=torch.float64, device=device)
    vectors = basis[:, :n] @ s_t.to(dtype)
    residuals = torch.as_tensor(np.abs(beta[-1] * s[-1, :]), dtype=torch.float64)
    values = torch.as_tensor(theta, dtype=torch.float64)
    return finalize(
        problem,
        values,
        vectors,
        residuals,
        counter=counter,
        converged=converged,
        iterations=n,
        method="lanczos",
        bar=bar,
    )
