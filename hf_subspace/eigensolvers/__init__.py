r"""Matrix-free eigensolvers for the top of the spectrum of a symmetric operator (a Hessian).

Every solver touches the operator only through ``matmat([d, m]) -> [d, m]``, which for a Hessian is a pass over
a dataset; they are judged by how many operator columns they need (``EigenResult.num_matvecs``).

Memory: Lanczos keeps at most ``max_basis_vectors`` d-sized vectors (default ``max(2k + 1, 20)``, ARPACK's ``ncv``)
whatever the number of steps; LOBPCG its blocks :math:`X, W, P` and their products, updated in place (about
``2(k + buffer) + 4k`` vectors with a warm start). Blocks are stored in the operator's dtype; their Gram matrices are
accumulated in float64 by row chunks and the small projected problems solved in float64. See
``benchmarks/memory.py`` and the "Memory" section of ``docs/performance.md``.

==============  =========================================================================================
``"lanczos"``   Thick-restart Lanczos, full reorthogonalisation, bounded basis; the default for a cold start.
``"lobpcg"``    Block LOBPCG with soft locking; few batched calls; the default when ``init`` is given.
``"eigsh"``     SciPy/ARPACK implicitly restarted Lanczos; the paper's baseline (``which="LA"`` or ``"LM"``).
==============  =========================================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..operator import reuse_scope
from . import eigsh, lanczos, lobpcg
from ._result import EigenResult

__all__ = ["METHODS", "EigenResult", "top_eigenpairs"]

# The submodules stay reachable as modules (``hf_subspace.eigensolvers.lobpcg.lobpcg`` is the function).
METHODS: dict[str, Callable[..., EigenResult]] = {
    "lobpcg": lobpcg.lobpcg,
    "lanczos": lanczos.lanczos,
    "eigsh": eigsh.eigsh,
}


def top_eigenpairs(
    operator: Any,
    k: int,
    *,
    method: str | None = None,
    init: torch.Tensor | None = None,
    tol: float | None = None,
    max_iters: int | None = None,
    seed: int = 0,
    progress: bool = False,
    max_basis_vectors: int | None = None,
    **method_options: Any,
) -> EigenResult:
    r"""The ``k`` largest (algebraic) eigenvalues of a symmetric operator and their eigenvectors.

    Args:
        operator: symmetric operator with ``dim``, ``dtype``, ``device``, ``matmat([d, m]) -> [d, m]`` and optionally
            ``is_distributed`` (then all ranks must call this in lock step; they return identical results).
        k: number of eigenpairs, ``1 <= k < d``.
        method: ``"lobpcg"``, ``"lanczos"`` or ``"eigsh"``; default ``"lobpcg"`` when ``init`` is given, else
            ``"lanczos"``.
        init: optional start block ``[d, m]``, typically the previous eigenvectors (warm start).
        tol: relative residual tolerance: converged when
            :math:`\max_i \lVert H v_i - \lambda_i v_i \rVert \le \mathrm{tol} \cdot \max_i |\lambda_i|`;
            default ``1e-6`` for float64 and ``1e-3`` otherwise. ``lanczos`` applies it to each pair,
            :math:`\lVert H v_i - \lambda_i v_i \rVert \le \mathrm{tol} \cdot |\lambda_i|` (floored at 1 % of the
            largest), and reports ``converged=True`` only after a deflated check from a fresh random vector found no
            eigenvalue above :math:`\lambda_k` (see :func:`~hf_subspace.eigensolvers.lanczos.lanczos`).
        max_iters: iteration cap of the method (its own default when ``None``).
        seed: seed of the CPU ``torch.Generator`` for every random start vector.
        progress: show a tqdm progress bar on the main process.
        max_basis_vectors: the most d-sized Krylov vectors a Lanczos method keeps (``lanczos``' restart size,
            ``eigsh``'s ``ncv``); default ``max(2k + 1, 20)``, at least ``k + 2``. A larger basis restarts less often
            (fewer products on a flat spectrum) at ``4 d`` bytes per vector in float32. LOBPCG's memory is set by
            ``k`` and its ``buffer``; the option does not apply to it and is ignored there.
        **method_options: options of the method (``buffer``, ``history``, ``buffer_residuals`` for lobpcg,
            ``check_every``, ``keep`` and ``verify_steps`` for lanczos, ``which`` and ``ncv`` for eigsh).

    Returns:
        :class:`EigenResult` with eigenvalues descending. If the tolerance is not reached within ``max_iters`` the
        best estimate is returned with ``converged=False`` and a ``RuntimeWarning``. ``eigengap`` is
        :math:`\theta_k - \theta_{k+1}` where the method has a next Ritz value; when it is no larger than the
        residuals (or ``1e-6 |λ_1|``) a ``UserWarning`` says that the top-``k`` eigenspace is not separated (once per
        call; see :func:`~hf_subspace.eigensolvers._common.boundary_warning`).

    Raises:
        ValueError: on an unknown method, ``k`` outside ``[1, d)``, or an ``init`` of the wrong shape.
        FloatingPointError: if the operator returns NaN or Inf.
    """
    if method is None:
        method = "lobpcg" if init is not None else "lanczos"
    if method not in METHODS:
        raise ValueError(f"Unknown eigensolver method {method!r}; valid methods: {', '.join(sorted(METHODS))}")
    if max_basis_vectors is not None:
        if method == "lanczos":
            method_options["max_basis_vectors"] = max_basis_vectors
        elif method == "eigsh":
            method_options.setdefault("ncv", max_basis_vectors)
    with reuse_scope(operator):  # a HessianOperator keeps its batches' graphs across the solve where they fit
        return METHODS[method](
            operator, k, init=init, tol=tol, max_iters=max_iters, seed=seed, progress=progress, **method_options
        )
