"""Validation, counting, orthonormalisation and result assembly shared by the eigensolvers."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import distributed
from ._result import EigenResult

__all__ = [
    "CountingOperator",
    "Problem",
    "Reduce",
    "all_finite",
    "boundary_warning",
    "combine_columns_",
    "default_tol",
    "fill_random_",
    "finalize",
    "gram_f64",
    "new_block",
    "no_reduce",
    "normalize_signs",
    "prepare",
    "progress_bar",
    "random_block",
    "residual_norms",
    "stop",
    "svqb",
    "svqb_",
    "sync_block",
]


REORTHOGONALIZE_BELOW = 0.01
"""SVQB repeats its round when the scaled Gram matrix has ``σ_min < REORTHOGONALIZE_BELOW · σ_max``."""

CHUNK_ELEMENTS = 1 << 22
"""Row chunks of the in-place block updates hold about this many entries (16 MiB in float32), never d-sized."""

GAP_FLOOR = 1e-6
r"""Relative floor of the degenerate-boundary warning: a gap below ``GAP_FLOOR · |λ_1|`` is always reported."""


def all_finite(block: torch.Tensor) -> bool:
    """Whether ``block`` holds no NaN or Inf, without a temporary of its size.

    ``aminmax`` propagates NaN and returns ±Inf if present; on a contiguous (or column-major) block it allocates
    nothing, where ``isfinite(block).all()`` or a float64 ``sum`` would allocate one to two copies of the block.
    """
    if block.numel() == 0:
        return True
    flat = block if block.is_contiguous() else block.T if block.T.is_contiguous() else block.contiguous()
    low, high = torch.aminmax(flat)
    return math.isfinite(float(low)) and math.isfinite(float(high))


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
        if not (block.is_contiguous() or block.T.is_contiguous()):
            block = block.contiguous()
        # A column-major block (each vector contiguous) is passed as is: a Hessian operator transposes it anyway.
        out = self.operator.matmat(block)
        self.num_matvecs += int(block.shape[1])
        self.num_calls += 1
        # Operators that refuse non-finite products themselves (HessianOperator) are not checked twice.
        if not getattr(self.operator, "checks_finite", False) and not all_finite(out):
            raise FloatingPointError(
                f"Hessian-vector product returned non-finite values (NaN or Inf) for a block of {block.shape[1]} "
                "vector(s); check the loss for overflow (lower the learning rate or use float32/float64) or the "
                "batches for invalid inputs."
            )
        return out.to(self.dtype)


Reduce = Callable[[torch.Tensor], torch.Tensor]
"""Sums a partial result over this process's rows over the processes, in place (``LinearOperator.reduce_``)."""


def no_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """The :data:`Reduce` of whole vectors: nothing to add."""
    return tensor


@dataclass
class Problem:
    """A validated eigenproblem: the operator's geometry and the resolved options.

    ``dim`` is the vectors' length ``d``; blocks hold ``local_dim`` rows, ``rows`` of the full vectors (all of them
    unless the operator splits its vectors across processes, ``sharded``), and ``reduce`` sums every inner product
    of local rows over the processes (the identity for whole vectors).
    """

    k: int
    dim: int
    dtype: torch.dtype
    device: torch.device
    distributed: bool
    tol: float
    init: torch.Tensor | None = None
    start: float = field(default_factory=time.perf_counter)
    local_dim: int = -1
    rows: slice | torch.Tensor | None = None
    sharded: bool = False
    reduce: Reduce = no_reduce


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
    local_dim = int(getattr(operator, "local_dim", dim))
    sharded = bool(getattr(operator, "shards_vectors", False))
    row_start = int(getattr(operator, "row_start", 0))
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
        if init.dim() != 2 or init.shape[0] != local_dim or init.shape[1] < 1:
            raise ValueError(
                f"init must have shape [d, m] = [{local_dim}, m] with m >= 1, got shape {tuple(init.shape)}"
            )
        init = init.detach().to(device=device, dtype=dtype)
        if not all_finite(init):
            raise ValueError("init contains non-finite values (NaN or Inf)")
    distributed = bool(getattr(operator, "is_distributed", False))
    return Problem(
        k=k,
        dim=dim,
        dtype=dtype,
        device=device,
        distributed=distributed,
        tol=float(tol),
        init=init,
        start=start,
        local_dim=local_dim,
        rows=getattr(operator, "local_rows", slice(row_start, row_start + local_dim)) if sharded else None,
        sharded=sharded,
        reduce=operator.reduce_ if sharded else no_reduce,
    )


def random_block(
    generator: torch.Generator,
    dim: int,
    m: int,
    dtype: torch.dtype,
    device: torch.device,
    rows: slice | torch.Tensor | None = None,
) -> torch.Tensor:
    """Standard-normal ``[dim, m]`` block drawn on the CPU from ``generator`` (identical on every rank); with ``rows``
    only those rows of it (split vectors: the same random vectors as with whole ones)."""
    block = torch.randn(dim, m, generator=generator, dtype=torch.float64)
    return (block if rows is None else block[rows]).to(device=device, dtype=dtype)


def new_block(dim: int, m: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Uninitialised ``[dim, m]`` block stored column by column (a transposed ``[m, dim]``): each vector contiguous."""
    return torch.empty(m, dim, dtype=dtype, device=device).T


def _row_chunks(dim: int, width: int) -> list[slice]:
    """Row slices of about ``CHUNK_ELEMENTS / width`` rows covering ``range(dim)``."""
    step = max(1, CHUNK_ELEMENTS // max(width, 1))
    return [slice(start, min(dim, start + step)) for start in range(0, dim, step)]


def combine_columns_(
    sources: list[torch.Tensor], coef: torch.Tensor, targets: list[torch.Tensor], splits: list[int]
) -> None:
    r"""``[T_1, T_2, ...] = [S_1, S_2, ...] @ coef`` computed row chunk by row chunk, in place.

    With :math:`S = [S_1, \dots, S_b]` (``[d, n]`` in total) and ``coef`` ``[n, q]`` (any dtype; cast to the blocks'
    dtype), the ``q`` result columns are split into ``splits`` (summing to ``q``) and written into ``targets`` (each
    ``[d, splits[i]]``). A target may be (a column range of) a source: every chunk of rows is multiplied before any of
    its rows is written, and rows depend only on themselves, so no ``[d, q]`` temporary is ever allocated; the extra
    memory is one ``[rows, q]`` chunk.

    Raises:
        ValueError: if the shapes do not agree.
    """
    n = sum(int(s.shape[1]) for s in sources)
    if coef.shape[0] != n or sum(splits) != coef.shape[1] or len(splits) != len(targets):
        raise ValueError(f"coef {tuple(coef.shape)} does not match {n} source columns and splits {splits}")
    if not sources or coef.shape[1] == 0:
        return
    dim = int(sources[0].shape[0])
    dtype = sources[0].dtype
    parts, offset = [], 0
    for src in sources:
        parts.append(coef[offset : offset + src.shape[1]].to(device=src.device, dtype=dtype))
        offset += src.shape[1]
    for rows in _row_chunks(dim, max(n, int(coef.shape[1]))):
        acc = None
        for src, part in zip(sources, parts):
            if src.shape[1] == 0:
                continue
            acc = src[rows] @ part if acc is None else acc.addmm_(src[rows], part)
        col = 0
        for target, width in zip(targets, splits):
            if width:
                target[rows].copy_(acc[:, col : col + width])  # type: ignore[index]
            col += width


def gram_f64(a: torch.Tensor, b: torch.Tensor, rows: int = 1 << 16, reduce: Reduce = no_reduce) -> torch.Tensor:
    r"""``a.T @ b`` (``[d, p]``, ``[d, q]``) accumulated in float64 over row chunks, returned on the CPU.

    A float32 product with :math:`d \sim 10^6`–:math:`10^8` terms loses accuracy systematically (measured: Rayleigh
    quotients 0.45 % low at d = 5.6 M), so each chunk is cast to float64 before its product; only one
    ``[rows, p + q]`` float64 chunk exists at a time (``[rows, p]`` when ``b`` is ``a``: the Gram matrix of a block).
    ``reduce`` sums the result over the processes of split vectors.
    """
    out = torch.zeros(a.shape[1], b.shape[1], dtype=torch.float64, device=a.device)
    same = b is a
    for start in range(0, int(a.shape[0]), rows):
        left = a[start : start + rows].to(torch.float64)
        out += left.T @ (left if same else b[start : start + rows].to(torch.float64))
    return reduce(out).cpu()


def residual_norms(x: torch.Tensor, hx: torch.Tensor, theta: torch.Tensor, reduce: Reduce = no_reduce) -> torch.Tensor:
    r"""Column norms :math:`\lVert Hx_i - \theta_i x_i \rVert_2` (float64 ``[m]``), by row chunks (no ``[d, m]`` copy)."""
    m = int(x.shape[1])
    total = torch.zeros(m, dtype=torch.float64, device=x.device)
    lam = theta.to(device=x.device, dtype=x.dtype)
    for rows in _row_chunks(int(x.shape[0]), m):
        r = torch.addcmul(hx[rows], x[rows], lam, value=-1)
        total += torch.linalg.vector_norm(r, dim=0).to(torch.float64) ** 2
    return reduce(total).sqrt()


def fill_random_(
    target: torch.Tensor, generator: torch.Generator, dim: int | None = None, rows: slice | torch.Tensor | None = None
) -> torch.Tensor:
    """Fill ``target`` ([d, m]) with standard-normal columns drawn on the CPU from ``generator``, one at a time.

    Column ``j`` is ``torch.randn(d, dtype=float64)`` (identical on every rank for the same generator state); only
    one float64 column exists at a time. With split vectors (``dim``, ``rows``) each column is drawn at full length
    ``dim`` and only ``rows`` of it kept, so the vectors are those of a whole-vector run. Returns ``target``.
    """
    for j in range(int(target.shape[1])):
        column = torch.randn(int(target.shape[0]) if dim is None else dim, generator=generator, dtype=torch.float64)
        target[:, j].copy_(column if rows is None else column[rows])
        del column
    return target


def svqb_(block: torch.Tensor, drop: float | None = None, reduce: Reduce = no_reduce) -> torch.Tensor:
    r"""In-place :func:`svqb`: orthonormalise the columns of ``block`` into its first ``r`` columns.

    Same mathematics as :func:`svqb` (zero and near-dependent directions dropped, a second round when the first was
    badly conditioned), but the new columns overwrite the old ones row chunk by row chunk
    (:func:`combine_columns_`), so no d-sized temporary is allocated. The Gram matrix is accumulated in float64 over
    row chunks (:func:`gram_f64`, as LOBPCG's Rayleigh–Ritz blocks): a float32 ``block.T @ block`` over ``d`` rows
    has errors far above the float32 rounding of the block itself (measured: orthogonality
    :math:`\lVert Q^\top Q - I \rVert_F` 7.7e-6 with a float32 Gram matrix, 9.5e-8 with float64, at d = 2e4).

    Returns:
        the view ``block[:, :r]`` with orthonormal columns (``r = 0`` when the block is numerically zero).
    """
    eps = torch.finfo(block.dtype).eps
    drop = 100 * eps if drop is None else drop
    for _ in range(2):
        m = int(block.shape[1])
        if m == 0:
            return block
        gram = gram_f64(block, block, reduce=reduce)  # float64 [m, m] on the CPU; d-sized data in float64 row chunks
        gram = (gram + gram.T) / 2
        norms = gram.diagonal().clamp_min(0).sqrt()
        keep = norms > 0
        if not bool(keep.any()):
            return block[:, :0]
        safe = torch.where(keep, norms, torch.ones_like(norms))
        gram = gram / safe[:, None] / safe[None, :]
        gram[~keep] = 0
        gram[:, ~keep] = 0
        sigma, vecs = torch.linalg.eigh(gram)
        ok = sigma > drop * sigma[-1]
        coef = vecs[:, ok] / sigma[ok].sqrt() / safe[:, None]
        coef[~keep] = 0
        r = int(ok.sum())
        combine_columns_([block], coef, [block[:, :r]], [r])
        block = block[:, :r]
        if float(sigma[ok][0]) >= REORTHOGONALIZE_BELOW * float(sigma[-1]):
            break
    return block


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
    # The in-place variant on a copy: one copy of the block either way, and one implementation of the method.
    return svqb_(block.clone(), drop)


def normalize_signs(vectors: torch.Tensor, sharded: bool = False) -> torch.Tensor:
    """Flip columns, in place, so that the entry of largest magnitude of each column is positive; returns ``vectors``.

    The search runs over row chunks, so no ``[d, k]`` temporary is allocated. With ``sharded`` (rows split across
    processes, in rank order) the largest entry is found across all processes (the first one on ties, as for whole
    vectors).
    """
    k = int(vectors.shape[1])
    if k == 0:
        return vectors
    best = torch.full((k,), -1.0, dtype=vectors.dtype, device=vectors.device)
    signs = torch.ones(k, dtype=vectors.dtype, device=vectors.device)
    for rows in _row_chunks(int(vectors.shape[0]), k):
        chunk = vectors[rows]
        values, idx = chunk.abs().max(dim=0)
        better = values > best
        best = torch.where(better, values, best)
        entry = chunk.gather(0, idx.unsqueeze(0)).squeeze(0)
        signs = torch.where(better, torch.where(entry < 0, -1.0, 1.0).to(vectors.dtype), signs)
    if sharded:
        # Every rank's (largest magnitude, sign) per column, stacked by rank; the first rank holding the maximum wins.
        table = torch.zeros(2, distributed.world_size(), k, dtype=torch.float64)
        table[0, distributed.rank()] = best.to(torch.float64).cpu()
        table[1, distributed.rank()] = signs.to(torch.float64).cpu()
        distributed.all_reduce_sum(table)
        winner = table[0].argmax(dim=0)
        signs = table[1].gather(0, winner.unsqueeze(0)).squeeze(0).to(device=vectors.device, dtype=vectors.dtype)
    return vectors.mul_(signs)


def stop(flag: bool, problem: Problem) -> bool:
    """A loop-exit decision, taken from rank 0 when the operator is distributed."""
    return distributed.broadcast_flag(bool(flag)) if problem.distributed else bool(flag)


def sync_block(block: torch.Tensor, problem: Problem) -> torch.Tensor:
    """Replace ``block`` ([d, m]) by rank 0's block, shape included, when the operator is distributed.

    A block about to enter the operator decides how many columns every rank's collective carries; taking rank 0's
    keeps the collectives matched even if rounding made the ranks' iterates drift apart. A block stored column by
    column (see :func:`new_block`) is overwritten in place.
    """
    if not problem.distributed:
        return block
    size = torch.tensor([block.shape[1]], dtype=torch.int64)
    distributed.broadcast(size)
    m = int(size.item())
    if problem.sharded:
        # Each rank holds other rows: nothing to copy. The blocks' widths follow from all-reduced Gram matrices,
        # identical on every rank, so they agree; should they not, the ranks have diverged.
        if m != block.shape[1]:
            raise RuntimeError(
                f"split-vector eigensolver: rank 0 has a block of {m} columns, this rank {block.shape[1]}"
            )
        return block
    if m != block.shape[1]:
        block = new_block(problem.dim, m, block.dtype, block.device)
    if block.T.is_contiguous():
        distributed.broadcast(block.T)
        return block
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
    next_value: float | None = None,
) -> EigenResult:
    r"""Sort descending, fix signs, broadcast from rank 0, warn, and build the result.

    Args:
        problem: the validated problem.
        eigenvalues: ``[n]`` estimates (``n >= k``; only the top ``k`` are kept).
        eigenvectors: ``[d, n]``; the result is a new row-major ``[d, k]`` tensor (the only d-sized allocation here).
        residuals: ``[n]`` residual norms.
        counter: the operator wrapper (its counts go into the result).
        converged: the method's verdict.
        iterations: the method's iteration count.
        method: the method's name.
        bar: the progress bar to close.
        next_value: the method's estimate of :math:`\lambda_{k+1}` (its next Ritz value), if it has one; gives
            ``EigenResult.eigengap`` and the degenerate-boundary warning (see :func:`boundary_warning`).
    """
    if bar is not None:
        bar.close()
    key = torch.nan_to_num(eigenvalues.to(torch.float64), nan=-float("inf"))
    order = torch.argsort(key, descending=True, stable=True)[: problem.k]
    values = eigenvalues[order].to(device=problem.device, dtype=problem.dtype).contiguous()
    vectors = eigenvectors[:, order.to(eigenvectors.device)].to(device=problem.device, dtype=problem.dtype)
    vectors = normalize_signs(vectors.contiguous(), problem.sharded)
    res = residuals[order.to(residuals.device)].to(device=problem.device, dtype=problem.dtype).contiguous()
    gap = None
    if next_value is not None and values.numel() and math.isfinite(float(next_value)):
        gap = torch.tensor([float(values[-1]) - float(next_value)], dtype=torch.float64)
    if problem.distributed:
        distributed.broadcast(values)
        if not problem.sharded:
            distributed.broadcast(vectors)
        distributed.broadcast(res)
        if gap is not None:
            distributed.broadcast(gap)
    eigengap = None if gap is None else float(gap[0])
    if not converged:
        scale = float(torch.nan_to_num(values.abs(), nan=0.0).max())
        warnings.warn(
            f"{method} did not converge to tol={problem.tol:g} for k={problem.k} within {iterations} iterations "
            f"({counter.num_matvecs} matvecs): max relative residual {float(res.max()) / max(scale, 1e-300):.3g}; "
            "returning the best estimate (raise max_iters or tol).",
            RuntimeWarning,
            stacklevel=3,
        )
    message = boundary_warning(values, res, eigengap) if converged else None  # else the residuals say nothing
    if message is not None:
        warnings.warn(message, UserWarning, stacklevel=3)
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
        eigengap=eigengap,
    )


def boundary_warning(values: torch.Tensor, residuals: torch.Tensor, eigengap: float | None) -> str | None:
    r"""The degenerate-boundary message, or ``None`` when the top ``k`` are separated from the rest.

    The gap :math:`\delta = \theta_k - \theta_{k+1}` is compared with
    :math:`\max(\max_{i \le k} \lVert r_i \rVert,\ \mathrm{GAP\_FLOOR} \cdot |\theta_1|)`. Davis–Kahan bounds the
    angle between the computed top-:math:`k` subspace and the true one by :math:`\lVert R \rVert / \delta`: once the
    gap is no larger than the residuals the bound says nothing (the :math:`k`-th direction is an arbitrary pick from
    a cluster as far as the computed accuracy can tell), and below ``GAP_FLOOR`` relative the two eigenvalues are equal
    to the working precision of a float32 Hessian product.
    """
    if eigengap is None or values.numel() == 0:
        return None
    scale = float(values.abs().max())
    threshold = max(float(residuals.max()), GAP_FLOOR * scale)
    if eigengap > threshold:
        return None
    k = int(values.numel())
    return (
        f"The top-{k} eigenspace is not separated: the gap to the next eigenvalue, "
        f"lambda_{k} - lambda_{k + 1} = {eigengap:.3g}, is within the accuracy of the estimates ({threshold:.3g}), so "
        f"the {k}-th eigenvector is an arbitrary pick from a cluster and the dominant subspace is not defined; "
        f"choose a k at a gap in the spectrum (or tighten tol)."
    )
