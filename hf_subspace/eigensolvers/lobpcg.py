r"""LOBPCG (Knyazev, 2001) for the largest algebraic eigenvalues, with soft locking and warm starts.

The iterate is a block :math:`X \in \mathbb{R}^{d \times m}` of Ritz vectors, :math:`m = k + \text{buffer}`, with
Ritz values :math:`\Lambda`. Each iteration

1. forms the residuals :math:`R = HX - X\Lambda` (from the tracked product :math:`HX`, no operator call) and keeps
   the columns that have not converged yet (*soft locking*: converged columns stay in the basis but stop costing
   operator applications);
2. orthonormalises them against :math:`[X, P]` and among themselves (SVQB, dropping near-dependent directions)
   into :math:`W`, and applies the operator once, to :math:`W` only;
3. solves the Rayleigh–Ritz problem on :math:`S = [X, W, P]` in float64,

   .. math::
       (S^\top H S)\, c = \theta\, (S^\top S)\, c ,

   by whitening the Gram matrix :math:`S^\top S` (its eigenvectors, dropping near-null directions), and takes the
   top :math:`m` Ritz pairs as the new :math:`X = SC`, :math:`HX = (HS)C`;
4. builds the new search direction :math:`P` from the :math:`[W, P]` components of the columns of :math:`C` that were
   active (Knyazev's soft locking: converged and buffer columns get no direction), orthonormalised
   against :math:`C` in the small space (Hetmaniuk & Lehoucq 2006; Duersch et al. 2018), with
   :math:`HP = (HS) Z` reused instead of recomputed. Optionally (``history``) the next Ritz vectors below the block
   are kept as well, a thick restart that enlarges the search space without operator calls.

**Memory.** The blocks :math:`X, HX` (``m`` columns), :math:`W, HW` and :math:`P, HP` (at most as many columns as
active residuals, plus ``history``) are stored in the operator dtype and updated in place, row chunk by row chunk:
:math:`S = [X, W, P]` is never concatenated, the Rayleigh–Ritz problem is formed from the small Gram blocks in float64,
the new :math:`X` overwrites the old one and the new :math:`P` is written into the storage of :math:`W` (or of the old
:math:`P`). So a refresh holds at most :math:`2(m + a + p)` d-sized vectors (:math:`a, p \le k` with the warm default),
plus the operator's own work and the ``[d, k]`` result.

So an iteration costs one operator call of as many columns as unconverged residuals. Started from a good guess
(the previous basis of a slowly changing Hessian) it converges in a handful of iterations. The ``buffer`` columns are
not required to converge: they widen the block so the convergence rate depends on
:math:`\lambda_{m+1}` rather than on :math:`\lambda_{k+1}` (helpful when :math:`\lambda_k \approx \lambda_{k+1}`).
"""

from __future__ import annotations

from typing import Any

import torch

from ._common import (
    CountingOperator,
    Reduce,
    combine_columns_,
    fill_random_,
    finalize,
    gram_f64,
    new_block,
    no_reduce,
    prepare,
    progress_bar,
    residual_norms,
    stop,
    svqb_,
    sync_block,
)
from ._result import EigenResult

__all__ = ["lobpcg"]


def _whiten(gram: torch.Tensor, drop: float) -> torch.Tensor:
    r"""``T`` with :math:`T^\top G T = I` over the numerically non-null directions of the Gram matrix ``G``."""
    sigma, vecs = torch.linalg.eigh(gram)
    keep = sigma > drop * sigma[-1].clamp_min(1e-300)
    return vecs[:, keep] / sigma[keep].sqrt()


def _gram_blocks(
    left: list[torch.Tensor], right: list[torch.Tensor], symmetric_pairs: bool, reduce: Reduce = no_reduce
) -> torch.Tensor:
    r"""The float64 matrix :math:`[L_1, \dots]^\top [R_1, \dots]` from the small products :math:`L_i^\top R_j`.

    With ``symmetric_pairs`` the result is known to be symmetric, so only the blocks ``i <= j`` are computed (the
    products with :math:`H` use :math:`L_i^\top H L_j = (H L_i)^\top L_j`).
    """
    sizes = [int(b.shape[1]) for b in left]
    offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    out = torch.zeros(offsets[-1], offsets[-1], dtype=torch.float64)
    for i, li in enumerate(left):
        for j, rj in enumerate(right):
            if symmetric_pairs and j < i:
                continue
            block = gram_f64(li, rj, reduce=reduce)
            out[offsets[i] : offsets[i + 1], offsets[j] : offsets[j + 1]] = block
            if symmetric_pairs and j > i:
                out[offsets[j] : offsets[j + 1], offsets[i] : offsets[i + 1]] = block.T
    return (out + out.T) / 2


def _rayleigh_ritz(
    s: list[torch.Tensor], hs: list[torch.Tensor], drop: float, reduce: Reduce = no_reduce
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All Ritz values (descending), their coefficients ``C`` ([n, r], float64) and the Gram matrix of ``[S_1, ...]``."""
    a = _gram_blocks(s, hs, symmetric_pairs=True, reduce=reduce)
    gram = _gram_blocks(s, s, symmetric_pairs=True, reduce=reduce)
    t = _whiten(gram, drop)
    b = t.T @ a @ t
    theta, y = torch.linalg.eigh((b + b.T) / 2)
    return theta.flip(0), t @ y.flip(1), gram


def _directions(
    c: torch.Tensor, picked: torch.Tensor, rest: torch.Tensor, gram: torch.Tensor, num_x: int, history: int, drop: float
) -> torch.Tensor:
    r"""Coefficients ``Z`` of the next :math:`P = SZ`, ``gram``-orthonormal and ``gram``-orthogonal to ``C``.

    ``Z`` spans the :math:`[W, P]` part (rows from ``num_x`` on) of the columns ``picked`` of the new Ritz coefficients
    ``c`` (the LOBPCG directions) and the first ``history`` of the remaining Ritz coefficients ``rest`` (the Ritz
    vectors just below the block: a thick restart that keeps more of the search space at no operator cost).
    """
    z = c[:, picked].clone()
    z[:num_x] = 0
    if history > 0:
        z = torch.cat([z, rest[:, :history]], dim=1)
    for _ in range(2):
        z = z - c @ (c.T @ gram @ z)
    g = z.T @ gram @ z
    norms = g.diagonal().clamp_min(0).sqrt()
    keep = norms > 0
    z, g, norms = z[:, keep], g[keep][:, keep], norms[keep]
    if z.shape[1] == 0:
        return z
    g = g / norms[:, None] / norms[None, :]
    return (z / norms) @ _whiten((g + g.T) / 2, drop)


def _storage_for(width: int, candidates: list[torch.Tensor | None], like: torch.Tensor) -> torch.Tensor:
    """The first candidate block with at least ``width`` columns (its first ``width`` columns), else a new block."""
    for block in candidates:
        if block is not None and block.shape[1] >= width:
            return block[:, :width]
    return new_block(int(like.shape[0]), width, like.dtype, like.device)


def lobpcg(
    operator: Any,
    k: int,
    *,
    init: torch.Tensor | None = None,
    tol: float | None = None,
    max_iters: int | None = None,
    seed: int = 0,
    progress: bool = False,
    buffer: int | None = None,
    buffer_residuals: bool = False,
    history: int | None = None,
) -> EigenResult:
    r"""Top-``k`` eigenpairs (largest algebraic) by block LOBPCG.

    Args:
        operator: symmetric operator (``dim``, ``dtype``, ``device``, ``matmat``; ``is_distributed`` optional).
        k: number of eigenpairs, ``1 <= k < d``.
        init: optional start block ``[d, m0]`` (e.g. the previous eigenvectors). All its columns are used; with fewer
            than ``k + buffer`` columns it is padded with seeded Gaussian columns.
        tol: stop when :math:`\max_{i \le k} \lVert Hx_i - \lambda_i x_i \rVert \le \mathrm{tol} \cdot
            \max_{i \le k} |\lambda_i|`; default ``1e-6`` (float64) or ``1e-3`` (float32).
        max_iters: maximal number of block iterations; default 100.
        seed: seed of the CPU generator for the random columns.
        progress: show a tqdm bar (main process only).
        buffer: extra block columns beyond ``k``; default ``max(2, k // 2)`` for a cold start and ``1`` with
            ``init`` (a random buffer column costs matvecs while a warm block is already accurate). The first buffer
            column's Ritz value gives ``EigenResult.eigengap``, except when the solve stops at iteration 0 with that
            column still random (``init`` with at most ``k`` columns that already pass ``tol``, e.g. the exact
            eigenvectors, and a buffer residual above ``tol``): ``eigengap`` is then ``None`` (unknown), as a random
            vector's Rayleigh quotient says nothing about :math:`\lambda_{k+1}`. Pass ``k + 1`` or more ``init``
            columns (or ask for ``k + 1`` eigenpairs) to get the gap of a warm solve.
        buffer_residuals: also spend operator applications on the residuals of the buffer columns (faster
            convergence per iteration, more matvecs per iteration).
        history: besides the LOBPCG directions :math:`P`, keep this many further Ritz vectors (the next ones below
            the block) in the search space; they cost no operator application, only ``2 * history`` stored vectors of
            length ``d``. ``0`` is plain LOBPCG; default: the block size ``m`` for a cold start and ``0`` with
            ``init`` (a warm block converges in one or two iterations, where the wider Rayleigh–Ritz problem costs
            more dense work than it saves).

    Returns:
        :class:`EigenResult`; ``residuals`` are computed from the tracked :math:`HX` (no extra operator call).

    Raises:
        ValueError: on a negative ``max_iters``, ``buffer`` or ``history``.
    """
    problem = prepare(operator, k, init, tol)
    max_iters = 100 if max_iters is None else max_iters
    if max_iters < 0:
        raise ValueError(f"max_iters={max_iters} must be >= 0")
    dim, dtype, device = problem.dim, problem.dtype, problem.device
    if buffer is None:
        buffer = 1 if problem.init is not None else max(2, k // 2)
    if buffer < 0:
        raise ValueError(f"buffer={buffer} must be >= 0")
    if history is not None and history < 0:
        raise ValueError(f"history={history} must be >= 0")
    counter = CountingOperator(operator)
    generator = torch.Generator().manual_seed(seed)
    eps = torch.finfo(dtype).eps
    drop = 100 * eps
    reduce = problem.reduce

    # Start block: init columns (all of them), padded with random ones, orthonormalised in place.
    m0 = 0 if problem.init is None else int(problem.init.shape[1])
    m = min(dim, max(k + buffer, m0))
    storage = new_block(problem.local_dim, m, dtype, device)
    filled = 0
    if m0 and problem.init is not None:
        storage[:, :m0].copy_(problem.init)
        filled = int(svqb_(storage[:, :m0], drop, reduce).shape[1])
    problem.init = None  # the caller's block is not needed any more (nor kept alive by the problem)
    while filled < m:
        extra = fill_random_(storage[:, filled:m], generator, dim, problem.rows)
        if filled:
            done = storage[:, :filled]
            for _ in range(2):
                extra.addmm_(done, reduce(done.T @ extra), alpha=-1)
        filled += int(svqb_(extra, drop, reduce).shape[1])
    x = sync_block(storage[:, :m], problem)
    del storage
    if history is None:
        history = 0 if m0 else m
    hx = counter(x)
    theta, c, _ = _rayleigh_ritz([x], [hx], drop, reduce)
    m = int(theta.shape[0])
    combine_columns_([x], c, [x[:, :m]], [m])
    combine_columns_([hx], c, [hx[:, :m]], [m])
    x, hx = x[:, :m], hx[:, :m]
    p: torch.Tensor | None = None
    hp: torch.Tensor | None = None
    bar = progress_bar(progress, max_iters, f"lobpcg k={k}")
    iterations = 0
    converged = False

    while True:
        res = residual_norms(x, hx, theta, reduce)
        scale = max(float(theta[:k].abs().max()), 1e-300)
        threshold = problem.tol * scale
        converged = stop(bool(res[:k].max() <= threshold), problem)
        if bar is not None:
            bar.set_postfix(rel_residual=f"{float(res[:k].max()) / scale:.2e}", lam1=f"{float(theta[0]):.4g}")
        if converged or iterations >= max_iters:
            break
        iterations += 1
        active = res > threshold
        if not buffer_residuals:
            active[k:] = False
        picked = torch.nonzero(active).flatten()
        # W: the active residuals, orthogonalised against [X, P] and among themselves, in their own storage.
        w = new_block(problem.local_dim, int(picked.numel()), dtype, device)
        for j, i in enumerate(picked.tolist()):
            w[:, j].copy_(hx[:, i]).add_(x[:, i], alpha=-float(theta[i]))
        before = res[picked].to(device=device, dtype=dtype)
        for _ in range(2):
            for basis in (x, p):
                if basis is not None and basis.shape[1]:
                    w.addmm_(basis, reduce(basis.T @ w), alpha=-1)
        after = reduce(torch.linalg.vector_norm(w, dim=0).square()).sqrt()
        w[:, after <= 1e3 * eps * before] = 0  # a residual inside span[X, P] is rounding noise: drop it
        w = sync_block(svqb_(w, drop, reduce), problem)
        if stop(w.shape[1] == 0, problem):  # residuals lie in span[X, P] to working precision: stagnation
            break
        hw = counter(w)
        s = [x, w] if p is None else [x, w, p]
        hs = [hx, hw] if hp is None else [hx, hw, hp]
        theta, c, gram = _rayleigh_ritz(s, hs, drop, reduce)
        theta, c, rest = theta[:m], c[:, :m], c[:, m:]
        z = _directions(c, picked.to(c.device), rest, gram, m, history, drop)
        q = int(z.shape[1])
        # New P and HP go into W's (or the old P's) storage; the new X overwrites X. All in place, by row chunks.
        new_p = _storage_for(q, [w, p], x) if q else None
        new_hp = _storage_for(q, [hw, hp], hx) if q else None
        both = torch.cat([c, z], dim=1)
        targets = [x] if new_p is None else [x, new_p]
        h_targets = [hx] if new_hp is None else [hx, new_hp]
        combine_columns_(s, both, targets, [m] + ([q] if q else []))
        combine_columns_(hs, both, h_targets, [m] + ([q] if q else []))
        p, hp = new_p, new_hp
        del w, hw, s, hs
        if bar is not None:
            bar.update(1)

    residuals = residual_norms(x[:, :k], hx[:, :k], theta[:k], reduce)
    # theta[k] estimates lambda_{k+1} once an iteration has put residual directions into its Rayleigh-Ritz problem
    # (or an init column or its own convergence vouches for it). A warm block that converges at iteration 0 holds a
    # random buffer column: its Rayleigh quotient lies far below lambda_{k+1} (measured: a gap of 11.9 reported for
    # a true 2.0), which would overstate the gap and hide a degenerate boundary.
    next_known = theta.shape[0] > k and (iterations > 0 or m0 > k or bool(res[k] <= threshold))
    del hx, p, hp
    return finalize(
        problem,
        theta[:k],
        x[:, :k],
        residuals,
        counter=counter,
        converged=converged,
        iterations=iterations,
        method="lobpcg",
        bar=bar,
        next_value=float(theta[k]) if next_known else None,
    )
