r"""The baseline: ARPACK's implicitly restarted Lanczos through :func:`scipy.sparse.linalg.eigsh`.

The operator is wrapped as a :class:`scipy.sparse.linalg.LinearOperator` (NumPy in, torch product, NumPy out, in the
operator's precision). ARPACK asks for one vector at a time and keeps ``ncv`` Lanczos vectors, restarting implicitly;
it stops when every wanted Ritz pair satisfies :math:`\lVert H v_i - \theta_i v_i \rVert \le \mathrm{tol}\,|\theta_i|`.
After it returns, one block product of the :math:`k` vectors gives the true residuals (counted in
``num_matvecs``).

``which="LM"`` (largest magnitude) is what the paper used; it can return large negative eigenvalues instead of the
top positive ones on an indefinite Hessian. ``which="LA"`` (largest algebraic, the default) asks for the top ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse.linalg as spla
import torch

from ._common import CountingOperator, finalize, prepare, progress_bar, random_block, svqb
from ._result import EigenResult

__all__ = ["eigsh"]

_WHICH = ("LA", "LM")


def eigsh(
    operator: Any,
    k: int,
    *,
    init: torch.Tensor | None = None,
    tol: float | None = None,
    max_iters: int | None = None,
    seed: int = 0,
    progress: bool = False,
    which: str = "LA",
    ncv: int | None = None,
) -> EigenResult:
    r"""Top-``k`` eigenpairs with :func:`scipy.sparse.linalg.eigsh` (ARPACK).

    Args:
        operator: symmetric operator (``dim``, ``dtype``, ``device``, ``matmat``; ``is_distributed`` optional).
        k: number of eigenpairs, ``1 <= k < d``.
        init: optional ``[d, m]`` block; the sum of its columns is ARPACK's start vector ``v0``. Default: a
            seeded Gaussian vector (ARPACK's own random start would differ between ranks).
        tol: ARPACK's relative tolerance; default ``1e-6`` (float64) or ``1e-3`` (float32).
        max_iters: ARPACK's ``maxiter`` (restarts); default ARPACK's ``10 d``.
        seed: seed of the CPU generator for ``v0``.
        progress: show a tqdm bar counting operator calls (main process only).
        which: ``"LA"`` (largest algebraic) or ``"LM"`` (largest magnitude, then sorted by algebraic value).
        ncv: number of Lanczos vectors ARPACK keeps; default ``min(d, max(2k + 1, 20))``.

    Returns:
        :class:`EigenResult`; ``iterations`` counts ARPACK's operator calls, ``converged`` is ARPACK's verdict.

    Note:
        ARPACK's loop decisions cannot be routed through ``broadcast_flag``; in a distributed run every rank must get
        bit-identical operator products (an all-reduce gives them) for the ranks to stay in lock step.
    """
    problem = prepare(operator, k, init, tol)
    if problem.sharded:
        raise ValueError(
            "eigsh (ARPACK) needs whole vectors, but this operator splits them across processes (shard_vectors=True); "
            "use method='lanczos' or 'lobpcg', or build the operator with shard_vectors=False."
        )
    if which not in _WHICH:
        raise ValueError(f"which={which!r} is not supported; valid values: {', '.join(_WHICH)}")
    dim, dtype, device = problem.dim, problem.dtype, problem.device
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    counter = CountingOperator(operator)
    generator = torch.Generator().manual_seed(seed)
    if problem.init is not None and float(problem.init.sum(dim=1).norm()) > 0:
        v0 = problem.init.sum(dim=1)
    else:
        v0 = random_block(generator, dim, 1, dtype, device)[:, 0]
    v0_np = v0.detach().cpu().numpy().astype(np_dtype)
    bar = progress_bar(progress, None, f"eigsh k={k}")

    def apply(block: np.ndarray) -> np.ndarray:
        two_d = block.reshape(dim, -1)
        t = torch.as_tensor(np.ascontiguousarray(two_d), dtype=dtype).to(device)
        out = counter(t).detach().cpu().numpy().astype(np_dtype, copy=False)
        if bar is not None:
            bar.update(1)
        return out.reshape(block.shape) if block.ndim == 1 else out

    linear_operator = spla.LinearOperator(
        (dim, dim), matvec=apply, matmat=apply, rmatvec=apply, rmatmat=apply, dtype=np_dtype
    )
    converged = True
    try:
        values, vectors = spla.eigsh(
            linear_operator, k=k, which=which, v0=v0_np, tol=problem.tol, maxiter=max_iters, ncv=ncv
        )
    except spla.ArpackNoConvergence as err:
        converged = False
        values, vectors = err.eigenvalues, err.eigenvectors
        if values is None or len(values) == 0:
            values, vectors = np.zeros(0), np.zeros((dim, 0))
    iterations = counter.num_calls
    vals = torch.as_tensor(np.asarray(values, dtype=np.float64))
    vecs = torch.as_tensor(np.ascontiguousarray(vectors), dtype=dtype).to(device)
    if vecs.shape[1] < k:
        # ARPACK gave up with fewer converged pairs: complete the block with random directions orthogonal to them
        # and take the Rayleigh-Ritz pairs of the whole block, so the result stays an orthonormal [d, k] estimate.
        converged = False
        extra = random_block(generator, dim, k - vecs.shape[1], dtype, device)
        for _ in range(2):
            extra = extra - vecs @ (vecs.T @ extra)
        vecs = svqb(torch.cat([vecs, svqb(extra)], dim=1))
    hv = counter(vecs)
    if vals.shape[0] != vecs.shape[1]:
        small = (vecs.T @ hv).to(torch.float64).cpu()
        vals, rot = torch.linalg.eigh((small + small.T) / 2)
        rot = rot.to(device=device, dtype=dtype)
        vecs, hv = vecs @ rot, hv @ rot
    residuals = (hv - vecs * vals.to(device=device, dtype=dtype)).norm(dim=0).cpu().to(torch.float64)
    return finalize(
        problem,
        vals,
        vecs,
        residuals,
        counter=counter,
        converged=converged,
        iterations=iterations,
        method="eigsh",
        bar=bar,
    )
