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

**Stopping rule and final check.** Pair :math:`i \le k` counts as converged when its residual is at most
``tol`` times its own :math:`|\theta_i|` (floored at ``PAIR_FLOOR`` :math:`|\theta_1|`), not ``tol`` times the
largest: a small eigenvalue needs its own accuracy to be told apart from its neighbours. Residuals alone cannot see an
eigenvalue whose direction has not yet emerged from the Krylov space (a single start vector holds a tiny component
along it, or none along the second copy of a repeated eigenvalue), so before ``converged=True`` is reported a short
Lanczos run of the *deflated* operator :math:`(I - YY^\top) H (I - YY^\top)` from a fresh random vector (``Y`` the
``k`` Ritz vectors) looks for what was missed. Its largest Ritz value :math:`\mu` is the largest Rayleigh quotient
found orthogonal to ``Y``: if :math:`\mu` exceeds :math:`\theta_k` by more than the tolerance, Lanczos starts again
from :math:`Y\mathbf{1} + u` (``u`` the check's Ritz vector, so the Krylov space holds the found pairs and the new
direction from its first steps) and is checked again; otherwise :math:`\theta_k - \max(\theta_{k+1}, \mu)` is the
reported gap, which goes to 0 at a degenerate boundary (the check's vector sees the other copies).
The check lives in the free columns of the basis: it adds no memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._common import (
    CountingOperator,
    Problem,
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

__all__ = ["DEFAULT_VERIFY_STEPS", "PAIR_FLOOR", "default_basis_size", "lanczos", "pair_tolerances"]


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


PAIR_FLOOR = 1e-2
r"""A pair's tolerance is ``tol · max(|θ_i|, PAIR_FLOOR · max_j |θ_j|)``: the floor keeps an eigenvalue near 0 (an
indefinite spectrum) from asking for a residual below the rounding error of a float32 product."""

DEFAULT_VERIFY_STEPS = 5
"""Steps of the final deflated check (operator columns); ``verify_steps=0`` switches the check off."""


def pair_tolerances(theta: np.ndarray, k: int, tol: float) -> np.ndarray:
    """Residual bound of each of the top ``k`` Ritz pairs (float64 ``[k]``), see :data:`PAIR_FLOOR`."""
    magnitude = np.abs(theta[:k])
    floor = PAIR_FLOOR * float(magnitude.max()) if magnitude.size else 0.0
    return tol * np.maximum(np.maximum(magnitude, floor), 1e-300)


@dataclass
class _Run:
    """What the sweeps and checks of one solve share: the operator, the basis storage and the counts."""

    problem: Problem
    counter: CountingOperator
    basis: torch.Tensor  # [d, ncv] stored column by column: the only d-sized storage of the method
    generator: torch.Generator
    ncv: int
    keep: int
    check_every: int
    bar: Any
    steps: int = 0  # operator columns: Lanczos steps and check steps
    restarts: int = 0


@dataclass
class _Sweep:
    """The outcome of one thick-restart Lanczos run: Ritz values, the top-``k`` residuals, next Ritz value."""

    theta: np.ndarray
    residuals: np.ndarray
    converged: bool
    next_value: float | None


def _sweep(run: _Run, k: int, steps_cap: int) -> _Sweep:
    r"""Thick-restart Lanczos from the unit vector ``run.basis[:, 0]`` for at most ``steps_cap`` steps.

    Stops when every top-``k`` pair meets its own tolerance (:func:`pair_tolerances`). On return the Ritz vectors
    :math:`Q_n s_i` are in ``run.basis[:, :k]`` and the other columns are free.
    """
    problem, basis, ncv, keep = run.problem, run.basis, run.ncv, run.keep
    dim, eps = problem.dim, torch.finfo(problem.dtype).eps
    t = np.zeros((ncv, ncv))  # projected matrix of the current basis
    n = 0  # columns of the basis whose products are in t
    theta, s, b = np.zeros(0), np.zeros((0, 0)), 0.0
    converged = False
    norm_estimate = 0.0
    for step in range(steps_cap):
        w = run.counter(basis[:, n : n + 1])[:, 0]
        run.steps += 1
        coef = _orthogonalize(w, basis[:, : n + 1], problem.reduce)
        t[n, n] = float(coef[n])
        b = _norm(w, problem.reduce)
        n += 1
        row = np.abs(t[n - 1, : n - 1]).sum() if n > 1 else 0.0
        norm_estimate = max(norm_estimate, abs(t[n - 1, n - 1]) + b + row)
        last = step + 1 == steps_cap
        breakdown = b <= 10 * eps * max(norm_estimate, 1e-300) * np.sqrt(n)
        full = n == ncv
        check = n >= k and ((step + 1 - k) % run.check_every == 0 or last or breakdown or full)
        if check:
            theta, s = _ritz(t[:n, :n])
            est = np.abs(b * s[-1, :k])
            bound = pair_tolerances(theta, k, problem.tol)
            # With n = d the basis is complete and the Ritz values are the eigenvalues.
            converged = stop(bool((est <= bound).all()) or n == dim, problem)
            if run.bar is not None:
                worst = float((est / bound).max()) * problem.tol
                run.bar.set_postfix(rel_residual=f"{worst:.2e}", lam1=f"{theta[0]:.4g}", restarts=run.restarts)
        if run.bar is not None:
            run.bar.update(1)
        if converged or last:
            break
        coupling = b
        if stop(breakdown, problem):
            # Invariant subspace found before the top k converged: continue from a fresh random direction.
            coupling = 0.0
            w = random_block(run.generator, dim, 1, problem.dtype, problem.device, problem.rows)[:, 0]
            _orthogonalize(w, basis[:, :n], problem.reduce)
            w_norm = _norm(w, problem.reduce)
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
            run.restarts += 1
        else:
            t[n, n - 1] = t[n - 1, n] = coupling
        basis[:, n].copy_(w).div_(w_norm)
        del w

    if s.shape[0] != n:  # the last step was not a check step (only when n < k, i.e. d tiny): solve now
        theta, s = _ritz(t[:n, :n])
    kk = min(k, n)
    combine_columns_([basis[:, :n]], torch.as_tensor(s[:, :kk]), [basis[:, :kk]], [kk])
    return _Sweep(theta, np.abs(b * s[-1, :kk]), converged or n == dim, float(theta[k]) if n > k else None)


def _deflated_check(run: _Run, k: int, threshold: float, steps: int) -> tuple[float, bool]:
    r"""Look for an eigenvalue above ``threshold`` orthogonal to the Ritz vectors ``Y = run.basis[:, :k]``.

    Runs up to ``steps`` Lanczos steps of :math:`(I - YY^\top) H (I - YY^\top)` from a fresh random vector, in the
    basis columns ``k .. k + steps - 1`` (every new vector is orthogonalised against ``Y`` and the check's own
    vectors together), and stops as soon as its largest Ritz value :math:`\mu` exceeds ``threshold``. On return the
    check's top Ritz vector :math:`u` (orthogonal to ``Y``) is in ``run.basis[:, k]``.

    Returns:
        ``(mu, found)``: the largest Rayleigh quotient found orthogonal to ``Y`` (a lower bound of the largest
        eigenvalue of the deflated operator), and whether it exceeds ``threshold``.
    """
    problem, basis = run.problem, run.basis
    eps = torch.finfo(problem.dtype).eps
    q = random_block(run.generator, problem.dim, 1, problem.dtype, problem.device, problem.rows)[:, 0]
    _orthogonalize(q, basis[:, :k], problem.reduce)
    basis[:, k].copy_(q).div_(_norm(q, problem.reduce))
    del q
    t = np.zeros((steps, steps))
    mu, found, j = -np.inf, False, 0
    s = np.ones((1, 1))
    for j in range(steps):
        w = run.counter(basis[:, k + j : k + j + 1])[:, 0]
        run.steps += 1
        if run.bar is not None:
            run.bar.update(1)
        coef = _orthogonalize(w, basis[:, : k + j + 1], problem.reduce)
        t[j, j] = float(coef[k + j])
        b = _norm(w, problem.reduce)
        theta, s = _ritz(t[: j + 1, : j + 1])
        mu = float(theta[0])
        found = mu > threshold
        breakdown = b <= 10 * eps * max(abs(mu), 1e-300) * np.sqrt(j + 1)
        if stop(found or breakdown or j + 1 == steps, problem):
            break
        t[j, j + 1] = t[j + 1, j] = b
        basis[:, k + j + 1].copy_(w).div_(b)
        del w
    combine_columns_([basis[:, k : k + j + 1]], torch.as_tensor(s[:, :1]), [basis[:, k : k + 1]], [1])
    return mu, stop(found, problem)


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
    verify_steps: int = DEFAULT_VERIFY_STEPS,
) -> EigenResult:
    r"""Top-``k`` eigenpairs (largest algebraic) by thick-restart Lanczos with full reorthogonalisation.

    ``converged=True`` means: every pair :math:`i \le k` has a residual
    :math:`|\beta_n s_{n,i}| \le \mathrm{tol} \cdot \max(|\theta_i|, \mathrm{PAIR\_FLOOR} \max_j |\theta_j|)`, *and*
    a final check of ``verify_steps`` Lanczos steps of the operator deflated against the ``k`` Ritz vectors, from a
    fresh random vector, found no Rayleigh quotient above :math:`\theta_k` (by more than the ``k``-th pair's
    tolerance). What the check guarantees: an eigenvalue :math:`\lambda > \theta_k` that the sweep missed is found
    unless the check's random start is nearly orthogonal to it and the Chebyshev growth of ``verify_steps`` steps
    does not make up for it, i.e. with high probability when :math:`\lambda` stands apart from the rest of the
    deflated spectrum by a fraction of its width; an eigenvalue tied with :math:`\theta_k` shows as a gap of about 0
    (and the degenerate-boundary warning). When the check finds one, Lanczos starts again from the found vectors plus
    the new direction and is checked again (within ``max_iters``). See the module docstring.

    Args:
        operator: symmetric operator (``dim``, ``dtype``, ``device``, ``matmat``; ``is_distributed`` optional).
        k: number of eigenpairs, ``1 <= k < d``.
        init: optional ``[d, m]`` block; the normalised sum of its columns is the start vector (a warm start
            towards the span of a previous basis). Default: a seeded Gaussian vector.
        tol: relative residual tolerance of each pair (see above); default ``1e-6`` (float64) or ``1e-3`` (float32).
        max_iters: maximal number of Lanczos steps (= matvecs), check steps not included; default ``max(300, 20 k)``.
        seed: seed of the CPU generator for the start vector, the check's vectors and restarts after a breakdown.
        progress: show a tqdm bar (main process only).
        check_every: test convergence every this many steps once ``k`` steps are done (the test solves a small
            eigenproblem of the basis size, negligible next to an operator application).
        max_basis_vectors: the most d-sized Lanczos vectors kept (ARPACK's ``ncv``); memory is this many vectors
            of length ``d`` in the operator dtype. Default ``max(2k + 1, 20)``, capped at ``d``; at least ``k + 2``.
        keep: Ritz vectors kept at a restart, ``k <= keep <= max_basis_vectors - 2``; default
            ``k + (max_basis_vectors - k) // 2`` (at least ``k + 1`` where the basis allows).
        verify_steps: steps of the final check (at most ``max_basis_vectors - k``: it runs in the free basis
            columns); ``0`` reports convergence on the residuals alone.

    Returns:
        :class:`EigenResult` with the Ritz vectors :math:`Q_n s_i`, the Lanczos residual estimates, ``iterations``
        counting the Lanczos and check steps, and ``eigengap`` :math:`\theta_k - \max(\theta_{k+1}, \mu)` (``\mu``
        the check's largest Rayleigh quotient, when it ran).

    Raises:
        ValueError: on ``check_every < 1``, ``max_iters < 1``, ``verify_steps < 0``, or ``max_basis_vectors`` /
            ``keep`` out of range.
    """
    problem = prepare(operator, k, init, tol)
    if check_every < 1:
        raise ValueError(f"check_every={check_every} must be >= 1")
    if max_iters is not None and max_iters < 1:
        raise ValueError(f"max_iters={max_iters} must be >= 1")
    if verify_steps < 0:
        raise ValueError(f"verify_steps={verify_steps} must be >= 0 (0 switches the final check off)")
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
    generator = torch.Generator().manual_seed(seed)
    run = _Run(
        problem=problem,
        counter=CountingOperator(operator),
        basis=new_block(problem.local_dim, ncv, dtype, device),  # the only d-sized storage of the method
        generator=generator,
        ncv=ncv,
        keep=keep,
        check_every=check_every,
        bar=progress_bar(progress, steps_cap, f"lanczos k={k}"),
    )
    rows, reduce = problem.rows, problem.reduce
    q = (
        problem.init.sum(dim=1)
        if problem.init is not None
        else random_block(generator, dim, 1, dtype, device, rows)[:, 0]
    )
    if _norm(q, reduce) == 0.0:
        q = random_block(generator, dim, 1, dtype, device, rows)[:, 0]
    lanczos_steps = 0
    while True:
        run.basis[:, 0].copy_(q).div_(_norm(q, reduce))
        del q
        before = run.steps
        sweep = _sweep(run, k, steps_cap - lanczos_steps)
        lanczos_steps += run.steps - before
        next_value, converged = sweep.next_value, sweep.converged
        checkable = min(verify_steps, ncv - k, dim - k)
        if not converged or checkable <= 0 or sweep.theta.size >= dim:
            break
        threshold = float(sweep.theta[k - 1] + pair_tolerances(sweep.theta, k, problem.tol)[k - 1])
        mu, found = _deflated_check(run, k, threshold, checkable)
        next_value = mu if next_value is None else max(next_value, mu)
        if not found:
            break
        # An eigenvalue was missed: start again from the found vectors plus the new direction (all unit vectors).
        converged = False
        if lanczos_steps >= steps_cap:
            break
        q = run.basis[:, : k + 1].sum(dim=1)
        run.restarts += 1

    kk = min(k, int(sweep.theta.size))
    return finalize(
        problem,
        torch.as_tensor(sweep.theta[:kk].copy(), dtype=torch.float64),
        run.basis[:, :kk],
        torch.as_tensor(sweep.residuals, dtype=torch.float64),
        counter=run.counter,
        converged=converged,
        iterations=run.steps,
        method="lanczos",
        bar=run.bar,
        next_value=next_value,
    )
