r"""Thick-restart Lanczos (Wu & Simon, 2000) with full reorthogonalisation, for the largest algebraic eigenvalues.

With the basis :math:`Q_n = [q_0, \dots, q_{n-1}]` (orthonormal, at most ``max_basis_vectors`` columns) the method
keeps the relation

.. math::
    H Q_n = Q_n T_n + \beta_n q_n e_n^\top,

where the projected matrix :math:`T_n = Q_n^\top H Q_n` is tridiagonal during a plain Lanczos run and, after a
restart, diagonal in its first :math:`\ell` rows with one "arrow" row coupling them to the next vector. If
:math:`T_n s_i = \theta_i s_i`, the Ritz pair :math:`(\theta_i, Q_n s_i)` has residual norm exactly
:math:`|\beta_n s_{n,i}|` (the last entry of :math:`s_i`), so convergence is tested without applying :math:`H`.
Each new vector is orthogonalised against the whole (bounded) basis twice (classical Gram-Schmidt), which keeps
:math:`Q_n` orthonormal to working precision and rules out the spurious copies of plain Lanczos.

**Restart.** When the basis is full (``n = max_basis_vectors``) and the top ``k`` have not converged, the basis is
replaced by the :math:`\ell` leading Ritz vectors :math:`Q_n S_\ell` (computed in place, row chunk by row chunk)
followed by the residual direction :math:`q_n`; then :math:`T = \mathrm{diag}(\theta_1..\theta_\ell)` plus the arrow
:math:`T_{\ell, i} = \beta_n s_{n,i}`, and Lanczos continues from :math:`q_n`. The kept Ritz vectors and
:math:`q_n` span a Krylov subspace again, so no information about the wanted pairs is lost (``\ell = k + (n - k)/2``
by default, at least ``k + 1``).

**Memory.** One ``[d, max_basis_vectors]`` block (stored column by column) plus the operator's product and the
``[d, k]`` result; the default ``max_basis_vectors = max(2k + 1, 20)`` is ARPACK's ``ncv``. Whatever the number of
steps, the method never holds more d-sized vectors. One step costs one operator application of one column.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._common import (
    CountingOperator,
    Reduce,
    combine_columns_,
    finalize,
    gram_f64,
    new_block,
    no_reduce,
    prepare,
    progress_bar,
    random_block,
    stop,
)
from ._result import EigenResult

__all__ = ["default_basis_size", "lanczos"]


def default_basis_size(k: int) -> int:
    """ARPACK's default ``ncv``: ``max(2k + 1, 20)`` Lanczos vectors (capped at ``d`` by the caller)."""
    return max(2 * k + 1, 20)


def _ritz(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All eigenpairs of the symmetric projected matrix ``t`` ([n, n], float64), eigenvalues descending."""
    values, vectors = np.linalg.eigh(t)
    return values[::-1].copy(), vectors[:, ::-1].copy()


def _orthogonalize(w: torch.Tensor, basis: torch.Tensor, reduce: Reduce = no_reduce) -> torch.Tensor:
    r"""Remove from ``w`` ([d]) its components along the orthonormal columns of ``basis`` ([d, n]), twice, in place.

    The coefficients :math:`c = Q^\top w` are accumulated in float64 over row chunks (:func:`gram_f64`): a float32
    sum of ``d`` terms leaves components of about :math:`\sqrt{d}\,\epsilon\,\lVert w \rVert` along the basis when
    :math:`w = Hq` is dominated by a few large eigenvalues (a spectrum spanning :math:`10^4`). The storage and the
    update :math:`w \leftarrow w - Qc` stay in the operator dtype; the extra memory is one float64 row chunk.

    Returns the coefficients of both passes, summed (float64 ``[n]``, on the CPU).
    """
    column = w.unsqueeze(1)
    coef = gram_f64(basis, column, reduce=reduce)[:, 0]
    w.addmv_(basis, coef.to(device=w.device, dtype=w.dtype), alpha=-1)
    coef2 = gram_f64(basis, column, reduce=reduce)[:, 0]
    w.addmv_(basis, coef2.to(device=w.device, dtype=w.dtype), alpha=-1)
    return coef + coef2


def _norm(v: torch.Tensor, reduce: Reduce = no_reduce) -> float:
    r"""``\lVert v \rVert_2`` of a ``[d]`` vector, accumulated in float64 (:func:`gram_f64`).

    torch's float32 ``norm`` was measured up to 6e-6 relative off at d = 2e4 (on vectors dominated by a few large
    eigen-directions): dividing by it left the Lanczos vectors that far from unit length.
    """
    column = v.unsqueeze(1)
    return float(gram_f64(column, column, reduce=reduce)[0, 0]) ** 0.5


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
    max_basis_vectors: int | None = None,
    keep: int | None = None,
) -> EigenResult:
    r"""Top-``k`` eigenpairs (largest algebraic) by thick-restart Lanczos with full reorthogonalisation.

    Args:
        operator: symmetric operator (``dim``, ``dtype``, ``device``, ``matmat``; ``is_distributed`` optional).
        k: number of eigenpairs, ``1 <= k < d``.
        init: optional ``[d, m]`` block; the normalised sum of its columns is the start vector (a warm start
            towards the span of a previous basis). Default: a seeded Gaussian vector.
        tol: stop when :math:`\max_{i \le k} |\beta_n s_{n,i}| \le \mathrm{tol} \cdot \max_{i \le k} |\theta_i|`;
            default ``1e-6`` (float64) or ``1e-3`` (float32).
        max_iters: maximal number of Lanczos steps (= matvecs); default ``max(300, 20 k)``.
        seed: seed of the CPU generator for the start vector and for restarts after a breakdown.
        progress: show a tqdm bar (main process only).
        check_every: test convergence every this many steps once ``k`` steps are done (the test solves a small
            eigenproblem of the basis size, negligible next to an operator application).
        max_basis_vectors: the most d-sized Lanczos vectors kept (ARPACK's ``ncv``); memory is this many vectors
            of length ``d`` in the operator dtype. Default ``max(2k + 1, 20)``, capped at ``d``; at least ``k + 2``.
        keep: Ritz vectors kept at a restart, ``k <= keep <= max_basis_vectors - 2``; default
            ``k + (max_basis_vectors - k) // 2`` (at least ``k + 1`` where the basis allows).

    Returns:
        :class:`EigenResult` with the Ritz vectors :math:`Q_n s_i`, the Lanczos residual estimates and
        ``eigengap`` :math:`\theta_k - \theta_{k+1}` from the projected matrix.

    Raises:
        ValueError: on ``check_every < 1``, ``max_iters < 1``, or ``max_basis_vectors`` / ``keep`` out of range.
    """
    problem = prepare(operator, k, init, tol)
    if check_every < 1:
        raise ValueError(f"check_every={check_every} must be >= 1")
    if max_iters is not None and max_iters < 1:
        raise ValueError(f"max_iters={max_iters} must be >= 1")
    dim, dtype, device = problem.dim, problem.dtype, problem.device
    ncv = default_basis_size(k) if max_basis_vectors is None else int(max_basis_vectors)
    if ncv < k + 2 and ncv < dim:
        raise ValueError(
            f"max_basis_vectors={max_basis_vectors} must be at least k + 2 = {k + 2} (a restart keeps k Ritz vectors "
            "plus the next Lanczos vector); raise it or leave it unset for the default max(2k + 1, 20)"
        )
    ncv = min(ncv, dim)
    if keep is None:
        keep = max(k + 1, k + (ncv - k) // 2)
        keep = min(keep, ncv - 2)
    elif not k <= keep <= ncv - 2:
        raise ValueError(f"keep={keep} must satisfy k={k} <= keep <= max_basis_vectors - 2 = {ncv - 2}")
    steps_cap = max_iters if max_iters is not None else max(300, 20 * k)
    steps_cap = max(steps_cap, min(k + 1, dim))
    counter = CountingOperator(operator)
    generator = torch.Generator().manual_seed(seed)
    eps = torch.finfo(dtype).eps
    rows, reduce = problem.rows, problem.reduce

    q = (
        problem.init.sum(dim=1)
        if problem.init is not None
        else random_block(generator, dim, 1, dtype, device, rows)[:, 0]
    )
    if _norm(q, reduce) == 0.0:
        q = random_block(generator, dim, 1, dtype, device, rows)[:, 0]
    basis = new_block(problem.local_dim, ncv, dtype, device)  # the only d-sized storage of the method
    basis[:, 0] = q / _norm(q, reduce)
    del q
    t = np.zeros((ncv, ncv))  # projected matrix of the current basis
    n = 0  # columns of the basis whose products are in t
    theta = np.zeros(0)
    s = np.zeros((0, 0))
    b = 0.0
    converged = False
    norm_estimate = 0.0
    restarts = 0
    bar = progress_bar(progress, steps_cap, f"lanczos k={k}")

    for step in range(steps_cap):
        w = counter(basis[:, n : n + 1])[:, 0]
        coef = _orthogonalize(w, basis[:, : n + 1], reduce)
        t[n, n] = float(coef[n])
        b = _norm(w, reduce)
        n += 1
        row = np.abs(t[n - 1, : n - 1]).sum() if n > 1 else 0.0
        norm_estimate = max(norm_estimate, abs(t[n - 1, n - 1]) + b + row)
        last = step + 1 == steps_cap
        breakdown = b <= 10 * eps * max(norm_estimate, 1e-300) * np.sqrt(n)
        full = n == ncv
        check = n >= k and ((step + 1 - k) % check_every == 0 or last or breakdown or full)
        if check:
            theta, s = _ritz(t[:n, :n])
            scale = max(float(np.abs(theta[:k]).max()), 1e-300)
            est = np.abs(b * s[-1, :k])
            # With n = d the basis is complete and the Ritz values are the eigenvalues.
            converged = stop(bool(est.max() <= problem.tol * scale) or n == dim, problem)
            if bar is not None:
                bar.set_postfix(rel_residual=f"{est.max() / scale:.2e}", lam1=f"{theta[0]:.4g}", restarts=restarts)
        if bar is not None:
            bar.update(1)
        if converged or last:
            break
        coupling = b
        if stop(breakdown, problem):
            # Invariant subspace found before the top k converged: continue from a fresh random direction.
            coupling = 0.0
            w = random_block(generator, dim, 1, dtype, device, rows)[:, 0]
            _orthogonalize(w, basis[:, :n], reduce)
            w_norm = _norm(w, reduce)
        else:
            w_norm = b
        if full:
            # Thick restart: the `keep` leading Ritz vectors, then the residual direction.
            combine_columns_([basis[:, :n]], torch.as_tensor(s[:, :keep]), [basis[:, :keep]], [keep])
            arrow = coupling * s[-1, :keep]
            t[:] = 0.0
            t[np.arange(keep), np.arange(keep)] = theta[:keep]
            t[keep, :keep] = arrow
            t[:keep, keep] = arrow
            n = keep
            restarts += 1
        else:
            t[n, n - 1] = t[n - 1, n] = coupling
        basis[:, n].copy_(w).div_(w_norm)
        del w

    if s.shape[0] != n:  # the last step was not a check step (only when n < k, i.e. d tiny): solve now
        theta, s = _ritz(t[:n, :n])
    kk = min(k, n)
    combine_columns_([basis[:, :n]], torch.as_tensor(s[:, :kk]), [basis[:, :kk]], [kk])
    residuals = torch.as_tensor(np.abs(b * s[-1, :kk]), dtype=torch.float64)
    values = torch.as_tensor(theta[:kk], dtype=torch.float64)
    return finalize(
        problem,
        values,
        basis[:, :kk],
        residuals,
        counter=counter,
        converged=converged,
        iterations=step + 1,
        method="lanczos",
        bar=bar,
        next_value=float(theta[k]) if n > k else None,
    )
