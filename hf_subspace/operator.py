"""The linear-operator protocol the eigensolvers consume, and a dense implementation of it."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

__all__ = ["LinearOperator", "MatrixOperator", "reuse_scope"]


def reuse_scope(operator: Any) -> contextlib.AbstractContextManager[Any]:
    """``operator.reusing_graphs()`` where the operator has it (a scope in which a
    :class:`~hf_subspace.HessianOperator` keeps its batches' first-order graphs across products), else a no-op.
    Solvers open it around all their products."""
    scope = getattr(operator, "reusing_graphs", None)
    return scope() if callable(scope) else contextlib.nullcontext()


class LinearOperator:
    """Base of symmetric operators on flat vectors of length ``dim``.

    Subclasses implement :meth:`matmat` for a block ``[d, m]``; :meth:`matvec` and ``@`` derive from it.
    ``is_distributed`` tells solvers that every rank runs them in lock step (their control flow must agree).

    An operator whose vectors are split across processes (``HessianOperator(..., shard_vectors=True)``) takes and
    returns this process's rows only: blocks are ``[local_dim, m]`` holding rows ``row_start … row_start +
    local_dim`` of the ``d``-dimensional vectors, and :meth:`reduce_` sums per-row partial results (Gram matrices,
    squared norms) over the processes. For whole vectors (the default) ``local_dim = dim``, ``row_start = 0`` and
    :meth:`reduce_` does nothing, so solvers written against these hooks run unchanged on both.
    """

    dim: int
    dtype: torch.dtype
    device: torch.device
    is_distributed: bool = False

    @property
    def local_dim(self) -> int:
        """Rows of each vector held by this process (``dim`` unless the vectors are split across processes)."""
        return self.dim

    @property
    def row_start(self) -> int:
        """Index of this process's first row in the full vector (0 unless the vectors are split)."""
        return 0

    @property
    def local_rows(self) -> slice | torch.Tensor:
        """This process's rows of the full vector: a range, or an index tensor (FSDP2 shards)."""
        return slice(self.row_start, self.row_start + self.local_dim)

    @property
    def shards_vectors(self) -> bool:
        """Whether blocks are this process's rows of vectors split across processes."""
        return False

    def reusing_graphs(self) -> contextlib.AbstractContextManager[Any]:
        """A scope in which the operator may keep work its products share (see :func:`reuse_scope`); nothing here."""
        return contextlib.nullcontext()

    def reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor``, a partial result over this process's rows (e.g. ``Aᵀ B`` of local blocks), over the
        processes, in place; returns it. The identity for whole vectors."""
        return tensor

    @property
    def shape(self) -> tuple[int, int]:
        return (self.dim, self.dim)

    def matmat(self, block: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """Apply the operator to one flat vector ``[d]``."""
        if vector.dim() != 1:
            raise ValueError(f"matvec expects a flat vector [d], got shape {tuple(vector.shape)}")
        return self.matmat(vector.unsqueeze(1)).squeeze(1)

    def __matmul__(self, other: torch.Tensor) -> torch.Tensor:
        return self.matvec(other) if other.dim() == 1 else self.matmat(other)

    def _check_block(self, block: torch.Tensor) -> None:
        if block.dim() != 2 or block.shape[0] != self.local_dim:
            raise ValueError(f"expected a block of shape [{self.local_dim}, m], got {tuple(block.shape)}")


class MatrixOperator(LinearOperator):
    """A dense symmetric matrix as an operator (tests, small problems, reference solutions).

    Args:
        matrix: a symmetric ``[d, d]`` tensor.
    """

    def __init__(self, matrix: torch.Tensor) -> None:
        if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"MatrixOperator needs a square matrix, got shape {tuple(matrix.shape)}")
        self.matrix = matrix
        self.dim = matrix.shape[0]
        self.dtype = matrix.dtype
        self.device = matrix.device
        self.num_matvecs = 0

    def matmat(self, block: torch.Tensor) -> torch.Tensor:
        self._check_block(block)
        self.num_matvecs += block.shape[1]
        return self.matrix @ block.to(self.dtype)
