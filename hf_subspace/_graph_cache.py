"""First-order graphs of the Hessian batches kept across products (graph reuse for small Hessian sets).

A Hessian-vector product pass builds, for every batch, the forward pass and the gradient with ``create_graph=True``,
then back-propagates the block's columns through it. When the graphs of the batches fit a memory budget they can be
kept and the next product only runs the second backward: for a Hessian set of one or a few batches, the forward and
first backward are a large share of each Lanczos or LOBPCG step.

A kept graph is only valid for the parameters, buffers and batch tensors it was built from, so the cache carries the
:func:`~hf_subspace._model_state.state_fingerprint` of that state and is emptied when the fingerprint changes (an
optimizer step, ``load_state_dict``, a ``p.data = ...`` replacement, a changed batch). Graphs are only kept inside a
:meth:`~hf_subspace.hessian.HessianOperator.reusing_graphs` scope, which the eigensolvers, the trace and the spectral
density open around their products, so no graph outlives a solve (a trainer holding the operator between refreshes
keeps nothing).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["BatchGraph", "GraphCache", "default_budget", "graph_bytes"]

DEFAULT_FRACTION = 4
"""The default budget is a quarter of the memory free on the operator's device when the first graph is offered."""


@dataclass
class BatchGraph:
    """One batch's first-order graph: its loss item count, its detached mean loss, and its gradient (tensors that
    still carry the graph of the forward pass and the first backward; ``None`` where a parameter is unused)."""

    items: int
    loss: torch.Tensor
    grads: tuple[torch.Tensor | None, ...] | None


def default_budget(device: torch.device) -> int:
    """A quarter of the free memory of ``device`` in bytes (CUDA: ``torch.cuda.mem_get_info``; otherwise the host's
    available physical memory, 1 GiB where it cannot be read)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free) // DEFAULT_FRACTION
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX hosts
        free = 4 * 2**30
    return int(free) // DEFAULT_FRACTION


def graph_bytes(roots: Iterable[torch.Tensor | None], exclude: set[int]) -> int:
    """Bytes held by the autograd graph behind ``roots``: the storages of every tensor its nodes saved, each counted
    once, plus the roots themselves; storages whose address is in ``exclude`` (parameters, buffers, batch inputs,
    which exist anyway) are not counted."""
    sizes: dict[int, int] = {}

    def add(tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in exclude:
            sizes[storage.data_ptr()] = storage.nbytes()

    stack = []
    for root in roots:
        if root is not None:
            add(root)
            stack.append(root.grad_fn)
    seen: set[Any] = set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for name in dir(node):
            if not name.startswith("_saved_"):
                continue
            try:
                value = getattr(node, name)
            except RuntimeError:  # a saved tensor already freed
                continue
            for item in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(item, torch.Tensor):
                    add(item)
        stack.extend(fn for fn, _ in node.next_functions)
    return sum(sizes.values())


class GraphCache:
    """The kept graphs of one operator, by batch index, under a byte budget.

    Args:
        budget: bytes the kept graphs may hold (``None``: :func:`default_budget` of the device, read when the first
            graph is offered; ``0``: nothing is kept).
    """

    def __init__(self, budget: int | None) -> None:
        if budget is not None and budget < 0:
            raise ValueError(f"graph_cache_bytes={budget} must be >= 0 (0 disables graph reuse, None: the default)")
        self.budget = budget
        self.depth = 0
        self.graphs: dict[int, BatchGraph] = {}
        self.key: Any = None
        self.used = 0
        self.limit: int | None = None
        self.full = False

    @property
    def active(self) -> bool:
        """Inside a reuse scope with a non-zero budget."""
        return self.depth > 0 and self.budget != 0

    def clear(self) -> None:
        self.graphs.clear()
        self.key = None
        self.used = 0
        self.limit = None
        self.full = False

    def check(self, key: Any) -> None:
        """Drop every graph unless they were built at the state ``key`` describes."""
        if self.graphs and key != self.key:
            self.clear()
        self.key = None  # until the coming pass completes (a failed pass leaves nothing trusted)

    def seal(self, key: Any) -> None:
        """The pass that used or built the graphs completed at the state ``key``."""
        self.key = key

    def get(self, index: int) -> BatchGraph | None:
        return self.graphs.get(index)

    def offer(self, index: int, graph: BatchGraph, device: torch.device, exclude: Sequence[torch.Tensor]) -> bool:
        """Keep ``graph`` for batch ``index`` if it fits the remaining budget; once one does not, no later one is
        measured or kept (until the cache is cleared). Returns whether it was kept."""
        if self.full or graph.grads is None:
            return False
        if self.limit is None:
            self.limit = default_budget(device) if self.budget is None else self.budget
        size = graph_bytes(graph.grads, {t.untyped_storage().data_ptr() for t in exclude})
        if self.used + size > self.limit:
            self.full = True
            return False
        self.graphs[index] = graph
        self.used += size
        return True
