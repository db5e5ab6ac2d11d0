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
4. builds the new search direction :math:`P` from the :math:`[W, P]` components of :math:`C`, orthonormalised
   against :math:`C` in the small space (Hetmaniuk & Lehoucq 2006; Duersch et al. 2018), with
   :math:`HP = (HS) Z` reused instead of recomputed. Optionally (``history``) the next Ritz vectors below the block
   are kept as well, a thick restart that enlarges the search space without operator calls.

So an iteration costs one operator call of as many columns as unconverged residuals. Started from a good guess
(the previous basis of a slowly changing Hessian) it converges in a handful of iterations. The ``buffer`` columns are
not required to converge: they widen the block so the convergence rate depends on
:math:`\lambda_{m+1}` rather than on :math:`\lambda_{k+1}` (helpful when :math:`\lambda_k \approx \lambda_{k+1}`).
"""

from __future__ import annotations

from typing import Any

import torch

from ._common import CountingOperator, finalize, prepare, progress_bar, random_block, stop, svqb, sync_block
from ._result import EigenResult

__all__ = ["lobpcg"]


def _whiten(gram: torch.Tensor, drop: float) -> torch.Tensor:
    r"""``T`` with :math:`T^\top G T = I` over the numerically non-null directions of the Gram matrix ``G``."""
    sigma, vecs = torch.linalg.eigh(gram)
    keep = sigma > drop * sigma[-1].clamp_min(1e-300)
    return vecs[:, keep] / sigma[keep].sqrt()


def _rayleigh_ritz(s: torch.Tensor, hs: torch.Tensor, drop: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All Ritz values (descending), their coefficients ``C`` ([n, r], float64) and the Gram matrix of ``s``."""
    a = (s.T @ hs).to(torch.float64)
    a = (a + a.T) / 2
    gram = (s.T @ s).to(torch.float64)
    gram = (gram + gram.T) / 2
    t = _whiten(gram, drop)
    b = t.T @ a @ t
    theta, y = torch.linalg.eigh((b + b.T) / 2)
    return theta.flip(0), t @ y.flip(1), gram


def _next_directions(
    c: torch.Tensor, rest: torch.Tensor, gram: torch.Tensor, num_x: int, history: int, drop: float
) -> torch.Tensor:
    r"""Coefficients ``Z`` of the next :math:`P = SZ`, ``gram``-orthonormal and ``gram``-orthogonal to ``C``.

    ``Z`` spans the :math:`[W, P]` part of the new Ritz coefficients ``C`` (the LOBPCG direction) and the first
    ``history`` of the remaining Ritz coefficients ``rest`` (the Ritz vectors just below the block: a thick restart
    that keeps more of the search space at no operator cost).
    """
    z = c.clone()
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
            ``init`` (a random buffer column costs matvecs while a warm block is already accurate).
        buffer_residuals: also spend operator applications on the residuals of the buffer columns (faster
            convergence per iteration, more matvecs per iteration).
        history: besides the LOBPCG direction :math:`P`, keep this many further Ritz vectors (the next ones below
            the block) in the search space; they cost no operator application, only ``2 * history`` stored vectors of
            length ``d``. ``0`` is plain LOBPCG; default: the block size ``m`` for a cold start and ``0`` with
            ``init`` (a warm block converges in one or two iterations, where the wider Rayleigh–Ritz problem costs
            more dense work than it saves).

    Returns:
        :class:`EigenResult`; ``residuals`` are computed from the tracked :math:`HX` (no extra operator call).
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
    m = min(dim, k + buffer)

    # Start block: init columns (all of them), padded with random ones, orthonormalised.
    x = problem.init if problem.init is not None else torch.empty(dim, 0, dtype=dtype, device=device)
    m = min(dim, max(m, x.shape[1]))
    x = svqb(x, drop)
    while x.shape[1] < m:
        extra = random_block(generator, dim, m - x.shape[1], dtype, device)
        if x.shape[1]:
            for _ in range(2):
                extra = extra - x @ (x.T @ extra)
        x = torch.cat([x, svqb(extra, drop)], dim=1)
    x = sync_block(x, problem)
    if history is None:
        history = 0 if problem.init is not None else m
    hx = counter(x)
    theta, c, _ = _rayleigh_ritz(x, hx, drop)
    m = theta.shape[0]
    x, hx = x @ c.to(dtype), hx @ c.to(dtype)
    p = hp = None
    bar = progress_bar(progress, max_iters, f"lobpcg k={k}")
    iterations = 0
    converged = False

    while True:
        lam = theta.to(dtype)
        r = hx - x * lam
        res = r.norm(dim=0).to(torch.float64)
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
        w = r[:, active.to(r.device)]
        before = w.norm(dim=0)
        basis = x if p is None else torch.cat([x, p], dim=1)
        for _ in range(2):
            w = w - basis @ (basis.T @ w)
        w = w[:, w.norm(dim=0) > 1e3 * eps * before]  # a residual inside span[X, P] is rounding noise: skip it
        w = sync_block(svqb(w, drop), problem)
        if stop(w.shape[1] == 0, problem):  # residuals lie in span[X, P] to working precision: stagnation
            break
        hw = counter(w)
        s = torch.cat([x, w] if p is None else [x, w, p], dim=1)
        hs = torch.cat([hx, hw] if hp is None else [hx, hw, hp], dim=1)
        theta, c, gram = _rayleigh_ritz(s, hs, drop)
        theta, c, rest = theta[:m], c[:, :m], c[:, m:]
        z = _next_directions(c, rest, gram, x.shape[1], history, drop)
        x, hx = s @ c.to(dtype), hs @ c.to(dtype)
        p, hp = (s @ z.to(dtype), hs @ z.to(dtype)) if z.shape[1] else (None, None)
        if bar is not None:
            bar.update(1)

    residuals = (hx[:, :k] - x[:, :k] * theta[:k].to(dtype)).norm(dim=0)
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
    )
