"""Flat vectors split by rows across processes: which rows a process holds, and the collectives that join them.

A flat parameter vector of length ``d`` (the selected parameters flattened in order) is cut into ``world_size``
contiguous row ranges of ``ceil(d / world_size)`` rows (the last one shorter, possibly empty), in rank order, so rank
``r`` holds rows ``[r·c, min(d, (r + 1)·c))`` with ``c = ceil(d / world_size)``. A range may start or end inside a
parameter tensor. Eigensolver blocks, the dominant basis and the Hessian's products are then stored as each process's
rows only; the collectives here gather a column to full length when a computation needs it, and sum the per-row
partial results of inner products.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from . import distributed

__all__ = ["LocalShards", "RowShard", "local_part"]


@dataclass(frozen=True)
class RowShard:
    """This process's rows ``[start, stop)`` of flat vectors of length ``dim`` split over ``world`` processes.

    Attributes:
        dim: the full length ``d``. world: number of processes. rank: this process.
    """

    dim: int
    world: int = 1
    rank: int = 0

    @classmethod
    def current(cls, dim: int) -> RowShard:
        """The split of ``dim`` rows over the processes of the initialised process group (one part without one)."""
        return cls(int(dim), distributed.world_size(), distributed.rank())

    @property
    def chunk(self) -> int:
        """Rows per process (every range but the last has exactly this many)."""
        return -(-self.dim // self.world)

    def bounds(self, rank: int) -> tuple[int, int]:
        """The rows ``[start, stop)`` of process ``rank``."""
        start = min(self.dim, rank * self.chunk)
        return start, min(self.dim, start + self.chunk)

    @property
    def start(self) -> int:
        return self.bounds(self.rank)[0]

    @property
    def stop(self) -> int:
        return self.bounds(self.rank)[1]

    @property
    def size(self) -> int:
        """Rows held here (``local_dim``)."""
        return self.stop - self.start

    @property
    def padded(self) -> int:
        """``world · chunk`` ≥ ``dim``: the length of a full vector padded for the equal-part collectives."""
        return self.world * self.chunk

    # -- collectives -------------------------------------------------------------------------------------------
    def reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum per-row partial results (``Vᵀx`` of local rows, squared norms) over the processes, in place."""
        return distributed.all_reduce_sum(tensor) if self.world > 1 else tensor

    def gather_columns(self, block: torch.Tensor) -> torch.Tensor:
        """The columns of a local ``[size, m]`` block at full length, as the rows of a ``[m, dim]`` tensor.

        One all-gather per column into a ``[m, padded]`` buffer (the only full-length memory: ``m·d`` entries).
        """
        m = int(block.shape[1])
        out = torch.empty(m, self.padded, dtype=block.dtype, device=block.device)
        part = torch.zeros(self.chunk, dtype=block.dtype, device=block.device)
        for j in range(m):
            part[: self.size].copy_(block[:, j])
            distributed.all_gather_into(out[j], part)
        return out[:, : self.dim]

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """The full ``[dim]`` vector from every process's local rows ``[size]``."""
        return self.gather_columns(local.unsqueeze(1))[0]

    def reduce_scatter_columns(self, full: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Sum the rows of ``full`` (``[m, padded]``, one full-length vector per row) over the processes and keep this
        process's rows of each, as the columns of ``out`` (``[size, m]``); returns ``out``."""
        part = torch.empty(self.chunk, dtype=full.dtype, device=full.device)
        for j in range(int(full.shape[0])):
            distributed.reduce_scatter_sum(part, full[j])
            out[:, j].copy_(part[: self.size])
        return out

    # -- parameters --------------------------------------------------------------------------------------------
    def pieces(self, tensors: Sequence[torch.Tensor]) -> Iterator[tuple[int, slice, slice]]:
        """``(i, rows, elements)`` for every tensor overlapping the local rows: local rows ``rows`` hold the flat
        elements ``elements`` of ``tensors[i]`` (tensors in the order of the flat vector, sizes adding up to ``dim``).

        Raises:
            ValueError: if the sizes do not add up to ``dim``.
        """
        offset, start, stop = 0, self.start, self.stop
        for i, t in enumerate(tensors):
            n = t.numel()
            lo, hi = max(offset, start), min(offset + n, stop)
            if lo < hi:
                yield i, slice(lo - start, hi - start), slice(lo - offset, hi - offset)
            offset += n
        if offset != self.dim:
            raise ValueError(f"the tensors hold {offset} elements but the vectors have dimension d={self.dim}")

    def local_rows(self, tensors: Sequence[torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
        """This process's rows of the flat concatenation of ``tensors`` (a new ``[size]`` tensor)."""
        like = tensors[0]
        out = torch.empty(self.size, dtype=dtype or like.dtype, device=like.device)
        for i, rows, elements in self.pieces(tensors):
            out[rows].copy_(tensors[i].detach().reshape(-1)[elements])
        return out


def local_part(t: torch.Tensor) -> torch.Tensor:
    """This process's shard of a DTensor (a view: writing to it writes the shard); any other tensor unchanged."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


@dataclass(frozen=True, eq=False)
class LocalShards:
    """This process's rows of flat vectors over FSDP2-sharded (DTensor) parameters: every parameter's local shard,
    flattened, in parameter order (the rows of a :class:`~hf_subspace.hessian.HessianOperator` of an FSDP2 model).

    Parameter lists (gradients, updates) are given as the DTensors or as their local shards; the rows of
    parameter ``i`` are ``[o_i, o_i + sizes[i])`` with ``o_i = sizes[0] + … + sizes[i-1]``, so no product or
    expansion needs another process's rows: only the k coefficients and squared norms are summed.

    Attributes:
        dim: the full length ``d``. sizes: elements of each parameter's local shard. index: ``[size]`` int64, the
        global row of each local row. world: number of processes. rank: this process.
    """

    dim: int
    sizes: tuple[int, ...]
    index: torch.Tensor
    world: int = 1
    rank: int = 0

    @classmethod
    def of(cls, params: Sequence[torch.Tensor], index: torch.Tensor) -> LocalShards:
        """The layout of ``params`` (DTensors) on this process; ``index``: their global rows."""
        sizes = tuple(local_part(p).numel() for p in params)
        dim = sum(p.numel() for p in params)
        return cls(dim, sizes, index, distributed.world_size(), distributed.rank())

    @property
    def size(self) -> int:
        return sum(self.sizes)

    def reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum per-row partial results over the processes, in place."""
        return distributed.all_reduce_sum(tensor) if self.world > 1 else tensor

    def pieces(self, tensors: Sequence[torch.Tensor]) -> Iterator[tuple[int, slice, slice]]:
        """``(i, rows, elements)`` for every tensor: local rows ``rows`` hold all flat elements of ``tensors[i]``'s
        local shard.

        Raises:
            ValueError: if the local shards' sizes are not this layout's.
        """
        if len(tensors) != len(self.sizes) or any(local_part(t).numel() != n for t, n in zip(tensors, self.sizes)):
            raise ValueError("the tensors' local shards do not match the basis' rows (a different model or sharding)")
        offset = 0
        for i, n in enumerate(self.sizes):
            yield i, slice(offset, offset + n), slice(0, n)
            offset += n

    def local_rows(self, tensors: Sequence[torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
        """This process's rows of the flat concatenation of ``tensors`` (a new ``[size]`` tensor)."""
        parts = [local_part(t).detach().reshape(-1) for t in tensors]
        return torch.cat(parts).to(dtype or parts[0].dtype)

    def state(self) -> dict[str, object]:
        """What :meth:`from_state` needs (saved with a checkpoint's basis)."""
        return {"dim": self.dim, "sizes": self.sizes, "index": self.index, "world": self.world, "rank": self.rank}

    @classmethod
    def from_state(cls, state: dict[str, object]) -> LocalShards:
        return cls(**state)  # type: ignore[arg-type]
