r"""Matrix-free eigensolvers for the top of the spectrum of a symmetric operator (a Hessian).

Every solver touches the operator only through ``matmat([d, m]) -> [d, m]``, which for a Hessian is a pass over
a dataset; they are judged by how many operator columns they need (``EigenResult.num_matvecs``).

==============  =========================================================================================
``"lanczos"``   Lanczos with full reorthogonalisation; one column per step; the default for a cold start.
``"lobpcg"``    Block LOBPCG with soft locking; few batched calls; the default when ``init`` is given.
``"eigsh"``     SciPy/ARPACK implicitly restarted Lanczos; the paper's baseline (``which="LA"`` or ``"LM"``).
==============  =========================================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

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
            default ``1e-6`` for float64 and ``1e-3`` otherwise.
        max_iters: iteration cap of the method (its own default when ``None``).
        seed: seed of the CPU ``torch.Generator`` for every random start vector.
        progress: show a tqdm progress bar on the main process.
        **method_options: options of the method (``buffer`` for lobpcg, ``check_every`` for lanczos, ``which`` and
            ``ncv`` for eigsh).

    Returns:
        :class:`EigenResult` with eigenvalues descending. If the tolerance is not reached within ``max_iters`` the
        best estimate is returned with ``converged=False`` and a ``RuntimeWarning``.

    Raises:
        ValueError: on an unknown method, ``k`` outside ``[1, d)``, or an ``init`` of the wrong shape.
        FloatingPointError: if the operator returns NaN or Inf.
    """
    if method is None:
        method = "lobpcg" if init is not None else "lanczos"
    if method not in METHODS:
        raise ValueError(f"Unknown eigensolver method {method!r}; valid methods: {', '.join(sorted(METHODS))}")
    return METHODS[method](
        operator, k, init=init, tol=tol, max_iters=max_iters, seed=seed, progress=progress, **method_options
    )
