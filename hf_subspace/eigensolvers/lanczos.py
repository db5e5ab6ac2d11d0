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
found orthogonal to ``Y``: if :math:`\mu` exceeds :math:`\theta_k` by more than the tolerance, the same deflated
run continues in the free basis columns until its Ritz pairs above :math:`\theta_k` meet their tolerances; they are
*locked in*: merged with ``Y``, the top ``k`` of both are kept, and a fresh check follows. Only when the free columns
do not suffice (or a locked pair's coupling :math:`Y^\top H y` exceeds its tolerance) does Lanczos start again, from
:math:`Y\mathbf{1} + u` (``u`` the check's Ritz vector). When a check finds nothing,
:math:`\theta_k - \max(\theta_{k+1}, \mu)` is the reported gap, which goes to 0 at a degenerate boundary (the
check's vector sees the other copies).
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


def pair_tolerances(theta: np.ndarray, k: int, tol: float, scale: float | None = None) -> np.ndarray:
    """Residual bound of each of the top ``k`` Ritz pairs (float64 ``[k]``), see :data:`PAIR_FLOOR`; the floor is taken
    from ``scale`` when given (the largest |θ| of the whole solve), else from these ``k``."""
    magnitude = np.abs(theta[:k])
    if scale is None:
        scale = float(magnitude.max()) if magnitude.size else 0.0
    floor = PAIR_FLOOR * scale
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


@dataclass
class _Check:
    """The outcome of one deflated check (see :func:`_deflated_check`)."""

    mu: float  # largest Rayleigh quotient found orthogonal to Y

    @property
    def check_value(self) -> float | None:
        """``mu`` when nothing was found (an estimate of the next eigenvalue below ``Y``'s), else ``None``."""
        return None if self.found else self.mu

    found: bool  # mu above the threshold: Y misses an eigenvalue
    values: np.ndarray  # the check's converged Ritz values above the threshold ([m]; empty unless extended)
    residuals: np.ndarray  # their residual norms for the full operator ([m])
    next_value: float | None  # the check's next Ritz value below those, if any


def _deflated_check(run: _Run, k: int, threshold: float, steps: int, scale: float) -> _Check:
    r"""Look for eigenvalues above ``threshold`` orthogonal to the Ritz vectors ``Y = run.basis[:, :k]``.

    Runs Lanczos on :math:`(I - YY^\top) H (I - YY^\top)` from a fresh random vector in the free basis columns
    ``k, k + 1, ...`` (every new vector is orthogonalised against ``Y`` and the check's own vectors together). The
    check proper is at most ``steps`` steps and ends as soon as its largest Ritz value :math:`\mu` exceeds
    ``threshold``. When it does, the same run goes on in the remaining free columns until every Ritz pair above
    ``threshold`` meets its tolerance (:func:`pair_tolerances` with the floor taken from ``scale``, the largest
    :math:`|\theta|`): these are the eigenpairs the sweep missed, found without starting again (a *locked* ``Y``).
    Their residual for :math:`H` itself adds the coupling :math:`Y^\top H y`, known exactly from the
    orthogonalisation coefficients.

    On return the check's Ritz vectors are in ``run.basis[:, k : k + m]`` (``m = len(values)``; when the extension
    ran out of columns, ``values`` is empty and the top Ritz vector ``u`` is in ``run.basis[:, k]``).
    """
    problem, basis = run.problem, run.basis
    eps = torch.finfo(problem.dtype).eps
    cap = run.ncv - k
    q = random_block(run.generator, problem.dim, 1, problem.dtype, problem.device, problem.rows)[:, 0]
    _orthogonalize(q, basis[:, :k], problem.reduce)
    basis[:, k].copy_(q).div_(_norm(q, problem.reduce))
    del q
    t = np.zeros((cap, cap))
    coupling = np.zeros((k, cap))  # Y^T H v_j of the check's vectors v_j
    theta, s = np.zeros(1), np.ones((1, 1))
    found, settled, b, j = False, False, 0.0, 0
    for j in range(cap):
        w = run.counter(basis[:, k + j : k + j + 1])[:, 0]
        run.steps += 1
        if run.bar is not None:
            run.bar.update(1)
        coef = _orthogonalize(w, basis[:, : k + j + 1], problem.reduce)
        coupling[:, j] = coef[:k]
        t[j, j] = float(coef[k + j])
        b = _norm(w, problem.reduce)
        theta, s = _ritz(t[: j + 1, : j + 1])
        found = found or bool(theta[0] > threshold)
        breakdown = b <= 10 * eps * max(abs(float(theta[0])), 1e-300) * np.sqrt(j + 1)
        if found:
            m = int((theta > threshold).sum())
            bound = pair_tolerances(theta, m, problem.tol, scale)
            settled = bool((np.abs(b * s[-1, :m]) <= bound).all()) or breakdown
            done = settled or j + 1 == cap
        else:
            done = breakdown or j + 1 == steps
        if stop(done, problem):
            break
        t[j, j + 1] = t[j + 1, j] = b
        basis[:, k + j + 1].copy_(w).div_(b)
        del w
    found, settled = stop(found, problem), stop(found and settled, problem)
    mu = float(theta[0])
    if not settled:
        combine_columns_([basis[:, k : k + j + 1]], torch.as_tensor(s[:, :1]), [basis[:, k : k + 1]], [1])
        return _Check(mu, found, np.zeros(0), np.zeros(0), None)
    m = int((theta > threshold).sum())
    own = np.abs(b * s[-1, :m])
    across = np.linalg.norm(coupling[:, : j + 1] @ s[:, :m], axis=0)
    combine_columns_([basis[:, k : k + j + 1]], torch.as_tensor(s[:, :m]), [basis[:, k : k + m]], [m])
    next_value = float(theta[m]) if theta.size > m else None
    return _Check(mu, True, theta[:m].copy(), np.hypot(own, across), next_value)


def _lock_in(run: _Run, k: int, values: np.ndarray, residuals: np.ndarray, check: _Check) -> np.ndarray:
    """Merge the check's new pairs (columns ``k ..``) with ``Y`` (columns ``:k``): the top ``k`` of both, sorted,
    go to columns ``:k``; returns all merged values, descending (the ones past ``k`` were dropped from ``Y``)."""
    merged = np.concatenate([values, check.values])
    order = np.argsort(-merged, kind="stable")
    n = merged.size
    permutation = np.zeros((n, n))
    permutation[order, np.arange(n)] = 1.0
    combine_columns_([run.basis[:, :n]], torch.as_tensor(permutation), [run.basis[:, :n]], [n])
    residuals[:] = np.concatenate([residuals, check.residuals])[order][:k]
    return merged[order]


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
    (and the degenerate-boundary warning). When the check finds one, its run continues until the missed pairs
    converge, they are locked in with the others and a new check follows (or, when the free basis columns do not
    suffice, Lanczos starts again from the found vectors plus the new direction), within ``max_iters``. See the
    module docstring.

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
        values, residuals = sweep.theta[: min(k, sweep.theta.size)].copy(), sweep.residuals.copy()
        checkable = min(verify_steps, ncv - k, dim - k)
        if not converged or checkable <= 0 or sweep.theta.size >= dim:
            break
        found = False
        for _ in range(k + 1):  # each lock-in raises theta_k past its tolerance: a few rounds at most
            tolerance = pair_tolerances(values, k, problem.tol)[k - 1]
            before = run.steps
            check = _deflated_check(run, k, float(values[k - 1] + tolerance), checkable, float(np.abs(values).max()))
            lanczos_steps += max(0, run.steps - before - checkable)  # steps past the check proper: Lanczos steps
            found = check.found
            candidates = [v for v in (next_value, check.check_value, check.next_value) if v is not None]
            if not found or check.values.size == 0:
                next_value = max(candidates) if candidates else None
                break
            # The sweep missed eigenpairs and the check found them: lock them in with Y and check again.
            merged = _lock_in(run, k, values, residuals, check)
            values = merged[:k].copy()
            pool = [*candidates, *merged[k:].tolist()]
            next_value = max(pool) if pool else None
            coupled = bool((residuals > pair_tolerances(values, k, problem.tol)).any())
            if stop(coupled or lanczos_steps >= steps_cap, problem):
                break  # a locked pair's coupling to Y is above its tolerance, or no steps are left: not verified
        if not found:
            break
        # An eigenvalue was missed and could not be locked in: start again from the found vectors plus the new
        # direction (all unit vectors), so the Krylov space holds them from its first steps.
        converged = False
        if lanczos_steps >= steps_cap:
            break
        q = run.basis[:, : k + 1].sum(dim=1)
        run.restarts += 1

    kk = min(k, int(values.size))
    return finalize(
        problem,
        torch.as_tensor(values[:kk].copy(), dtype=torch.float64),
        run.basis[:, :kk],
        torch.as_tensor(residuals[:kk], dtype=torch.float64),
        counter=run.counter,
        converged=converged,
        iterations=run.steps,
        method="lanczos",
        bar=run.bar,
        next_value=next_value,
    )
