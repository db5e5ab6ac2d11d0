"""Validation, counting, orthonormalisation and result assembly shared by the eigensolvers."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import distributed
from ._result import EigenResult

__all__ = [
    "CountingOperator",
    "Problem",
    "default_tol",
    "finalize",
    "normalize_signs",
    "prepare",
    "progress_bar",
    "random_block",
    "stop",
    "svqb",
    "sync_block",
]


REORTHOGONALIZE_BELOW = 0.01
"""SVQB repeats its round when the scaled Gram matrix has ``σ_min < REORTHOGONALIZE_BELOW · σ_max``."""


def default_tol(dtype: torch.dtype) -> float:
    """Relative residual tolerance for ``dtype``: ``1e-6`` in float64, ``1e-3`` in lower precision."""
    return 1e-6 if dtype == torch.float64 else 1e-3


class CountingOperator:
    """Applies the operator to blocks, counts the columns, and rejects non-finite products.

    Args:
        operator: anything with ``dim``, ``dtype``, ``device`` and ``matmat([d, m]) -> [d, m]``.
    """

    def __init__(self, operator: Any) -> None:
        self.operator = operator
        self.dtype: torch.dtype = operator.dtype
        self.num_matvecs = 0
        self.num_calls = 0

    def __call__(self, block: torch.Tensor) -> torch.Tensor:
        """Return ``H @ block`` in the operator dtype.

        Raises:
            FloatingPointError: if the product holds NaN or Inf.
        """
        out = self.operator.matmat(block.contiguous())
        self.num_matvecs += int(block.shape[1])
        self.num_calls += 1
        if not math.isfinite(float(out.sum(dtype=torch.float64))):  # NaN/inf anywhere propagate into the sum
            raise FloatingPointError(
                f"Hessian-vector product returned non-finite values (NaN or Inf) for a block of {block.shape[1]} "
                "vector(s); check the loss for overflow (lower the learning rate or use float32/float64) or the "
                "batches for invalid inputs."
            )
        return out.to(self.dtype)


@dataclass
class Problem:
    """A validated eigenproblem: the operator's geometry and the resolved options."""

    k: int
    dim: int
    dtype: torch.dtype
    device: torch.device
    distributed: bool
    tol: float
    init: torch.Tensor | None = None
    start: float = field(default_factory=time.perf_counter)


def prepare(operator: Any, k: int, init: torch.Tensor | None, tol: float | None) -> Problem:
    """Check the arguments every solver takes and resolve their defaults.

    Args:
        operator: symmetric operator (``dim``, ``dtype``, ``device``, ``matmat``; ``is_distributed`` optional).
        k: number of eigenpairs, ``1 <= k < d``.
        init: optional start block ``[d, m]`` (or one vector ``[d]``).
        tol: relative residual tolerance, ``None`` for :func:`default_tol`.

    Raises:
        TypeError: if ``operator`` lacks ``dim`` or ``matmat``.
        ValueError: on an out-of-range ``k``, a non-positive ``tol``, or an ``init`` of the wrong shape or with
            non-finite values.
    """
    start = time.perf_counter()
    if not callable(getattr(operator, "matmat", None)) or not hasattr(operator, "dim"):
        raise TypeError(
            f"operator must provide `dim`, `dtype`, `device` and `matmat(block)`, got {type(operator).__name__}"
        )
    dim = int(operator.dim)
    dtype = getattr(operator, "dtype", torch.float32)
    device = torch.device(getattr(operator, "device", "cpu"))
    if not dtype.is_floating_point:
        raise TypeError(f"operator dtype must be a floating type, got {dtype}")
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if not 1 <= k < dim:
        raise ValueError(f"k={k} must satisfy 1 <= k < d={dim}")
    if tol is None:
        tol = default_tol(dtype)
    if not (math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol={tol} must be a positive finite number")
    if init is not None:
        if not isinstance(init, torch.Tensor):
            raise TypeError(f"init must be a torch.Tensor of shape [d, m], got {type(init).__name__}")
        if init.dim() == 1:
            init = init.unsqueeze(1)
        if init.dim() != 2 or init.shape[0] != dim or init.shape[1] < 1:
            raise ValueError(f"init must have shape [d, m] = [{dim}, m] with m >= 1, got shape {tuple(init.shape)}")
        init = init.detach().to(device=device, dtype=dtype)
        if not bool(torch.isfinite(init).all()):
            raise ValueError("init contains non-finite values (NaN or Inf)")
    distributed = bool(getattr(operator, "is_distributed", False))
    return Problem(
        k=k, dim=dim, dtype=dtype, device=device, distributed=distributed, tol=float(tol), init=init, start=start
    )


def random_block(
    generator: torch.Generator, dim: int, m: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Standard-normal ``[dim, m]`` block drawn on the CPU from ``generator`` (identical on every rank)."""
    return torch.randn(dim, m, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)


def svqb(block: torch.Tensor, drop: float | None = None) -> torch.Tensor:
    r"""Orthonormalise the columns of ``block``, dropping near-dependent directions.

    With :math:`D = \mathrm{diag}(B^\top B)^{-1/2}` and :math:`D B^\top B D = U \Sigma U^\top` (in float64), returns
    :math:`B D U_+ \Sigma_+^{-1/2}` over the eigenvalues :math:`\sigma > \mathrm{drop} \cdot \sigma_{\max}`
    (Stathopoulos & Wu's SVQB). One round leaves an orthogonality error of about
    :math:`\epsilon\,\sigma_{\max}/\sigma_{\min}`, so a second round runs only when the scaled Gram matrix is
    worse conditioned than ``1 / REORTHOGONALIZE_BELOW``; either way the result is orthonormal to working precision.

    Args:
        block: ``[d, m]``.
        drop: relative eigenvalue threshold; default ``100 * eps`` of the block's dtype.

    Returns:
        ``[d, r]`` with orthonormal columns, ``r <= m`` (``r = 0`` when the block is numerically zero).
    """
    eps = torch.finfo(block.dtype).eps
    drop = 100 * eps if drop is None else drop
    for _ in range(2):
        if block.shape[1] == 0:
            return block
        gram = (block.T @ block).to(torch.float64)
        gram = (gram + gram.T) / 2
        norms = gram.diagonal().clamp_min(0).sqrt()
        keep = norms > 0
        if not bool(keep.any()):
            return block[:, :0]
        block, gram, norms = block[:, keep], gram[keep][:, keep], norms[keep]
        gram = gram / norms[:, None] / norms[None, :]
        sigma, vecs = torch.linalg.eigh(gram)
        ok = sigma > drop * sigma[-1]
        coef = vecs[:, ok] / sigma[ok].sqrt() / norms[:, None]
        block = block @ coef.to(block.dtype)
        if float(sigma[ok][0]) >= REORTHOGONALIZE_BELOW * float(sigma[-1]):
            break  # well conditioned: the first round is already orthonormal to about 100 eps
    return block


def normalize_signs(vectors: torch.Tensor) -> torch.Tensor:
    """Flip columns so that the entry of largest magnitude of each column is positive."""
    if vectors.shape[1] == 0:
        return vectors
    idx = vectors.abs().argmax(dim=0)
    signs = torch.sign(vectors.gather(0, idx.unsqueeze(0))).squeeze(0)
    signs[signs == 0] = 1
    return vectors * signs


def stop(flag: bool, problem: Problem) -> bool:
    """A loop-exit decision, taken from rank 0 when the operator is distributed."""
    return distributed.broadcast_flag(bool(flag)) if problem.distributed else bool(flag)


def sync_block(block: torch.Tensor, problem: Problem) -> torch.Tensor:
    """Replace ``block`` ([d, m]) by rank 0's block, shape included, when the operator is distributed.

    A block about to enter the operator decides how many columns every rank's collective carries; taking rank 0's
    keeps the collectives matched even if rounding made the ranks' iterates drift apart.
    """
    if not problem.distributed:
        return block
    size = torch.tensor([block.shape[1]], dtype=torch.int64)
    distributed.broadcast(size)
    m = int(size.item())
    if m != block.shape[1]:
        block = torch.empty(problem.dim, m, dtype=block.dtype, device=block.device)
    return distributed.broadcast(block.contiguous())


def progress_bar(enabled: bool, total: int | None, desc: str) -> Any:
    """A tqdm bar on the main process when ``enabled``, otherwise ``None``."""
    if not enabled or not distributed.is_main_process():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)


def finalize(
    problem: Problem,
    eigenvalues: torch.Tensor,
    eigenvectors: torch.Tensor,
    residuals: torch.Tensor,
    *,
    counter: CountingOperator,
    converged: bool,
    iterations: int,
    method: str,
    bar: Any = None,
) -> EigenResult:
    """Sort descending, fix signs, broadcast from rank 0, warn when not converged, and build the result."""
    if bar is not None:
        bar.close()
    key = torch.nan_to_num(eigenvalues.to(torch.float64), nan=-float("inf"))
    order = torch.argsort(key, descending=True, stable=True)[: problem.k]
    values = eigenvalues[order].to(device=problem.device, dtype=problem.dtype).contiguous()
    vectors = eigenvectors[:, order.to(eigenvectors.device)].to(device=problem.device, dtype=problem.dtype)
    vectors = normalize_signs(vectors).contiguous()
    res = residuals[order.to(residuals.device)].to(device=problem.device, dtype=problem.dtype).contiguous()
    if problem.distributed:
        distributed.broadcast(values)
        distributed.broadcast(vectors)
        distributed.broadcast(res)
    if not converged:
        scale = float(torch.nan_to_num(values.abs(), nan=0.0).max())
        warnings.warn(
            f"{method} did not converge to tol={problem.tol:g} for k={problem.k} within {iterations} iterations "
            f"({counter.num_matvecs} matvecs): max relative residual {float(res.max()) / max(scale, 1e-300):.3g}; "
            "returning the best estimate (raise max_iters or tol).",
            RuntimeWarning,
            stacklevel=3,
        )
    return EigenResult(
        eigenvalues=values,
        eigenvectors=vectors,
        residuals=res,
        num_matvecs=counter.num_matvecs,
        converged=bool(converged),
        iterations=int(iterations),
        method=method,
        seconds=time.perf_counter() - problem.start,
        num_calls=counter.num_calls,
    )
