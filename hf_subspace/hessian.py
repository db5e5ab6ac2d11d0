"""Matrix-free Hessian of a model's training loss over a fixed Hessian dataset.

The operator represents

.. math::

    H = \\nabla^2_\\theta \\, \\frac{1}{N} \\sum_{b} n_b \\, L_b(\\theta), \\qquad N = \\sum_b n_b,

where :math:`L_b` is the mean loss of batch :math:`b` over its :math:`n_b` *loss items* (samples for sequence-level
losses, labels ``!= -100`` for token-level ones; see :mod:`hf_subspace._loss_items`), so :math:`H` is the Hessian of
the mean over all loss items of the dataset, the loss a ``transformers.Trainer`` optimises, however the dataset is cut
into batches or shards. :math:`\\theta \\in \\mathbb{R}^d` are the selected trainable parameters flattened in
``model.named_parameters()`` order. Products are computed by double back-propagation (Pearlmutter's trick):
:math:`Hv = \\nabla_\\theta \\langle \\nabla_\\theta L, v \\rangle`. For a block :math:`V \\in \\mathbb{R}^{d \\times m}` each
batch's forward pass and gradient graph are built once and reused by all :math:`m` columns (a loop over the columns,
or one vectorised backward with ``block_product="batched"``), so a block costs one pass over the data. Inside
:meth:`HessianOperator.reusing_graphs` (which the solvers open) the graphs that fit ``graph_cache_bytes`` are also
kept across products at unchanged parameters, so later products skip the forward pass and first backward. Under
``torch.distributed`` every rank holds its own shard of batches; the per-rank sums :math:`\\sum_b n_b H_b V` and
:math:`\\sum_b n_b` are added with one all-reduce, so every rank gets the global product.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed as dist
from ._batched_product import batched_or_refuse, choose_block_method, column_loop
from ._finite_difference import difference_products_, difference_steps
from ._fsdp import fsdp_pass, local_rows
from ._graph_cache import BatchGraph, GraphCache
from ._loss_items import (
    LossFn,
    NumItemsFn,
    batch_num_samples,
    count_loss_items,
    default_loss_fn,
    evaluate_loss,
    model_shifts_labels,
)
from ._model_state import (
    batch_tensors,
    exact_mode,
    full_precision_weights,
    is_fsdp2,
    state_fingerprint,
    unwrap_model,
)
from ._params import select_parameters, split_like
from ._pass_sums import Sums as _Sums
from ._pass_sums import finite as _finite
from ._pass_sums import to_device
from ._shards import RowShard
from .operator import LinearOperator

__all__ = [
    "BlockProduct",
    "HessianOperator",
    "LossFn",
    "NumItemsFn",
    "Product",
    "batch_num_samples",
    "count_loss_items",
    "default_loss_fn",
    "unwrap_model",
]

logger = logging.getLogger(__name__)

Product = Literal["double_backward", "finite_difference"]
"""How a Hessian-vector product is computed: ``"double_backward"`` (exact, Pearlmutter's trick) or
``"finite_difference"`` (central differences of the gradient, see :mod:`hf_subspace._finite_difference`: for models
without double backward, e.g. fused attention kernels or CTC losses)."""

BlockProduct = Literal["auto", "loop", "batched"]
"""How a block of ``m`` vectors is multiplied: ``"loop"`` (one backward per column through the retained graph),
``"batched"`` (one vectorised backward, ``is_grads_batched``), ``"auto"`` (loop on CPU; on CUDA, timed once on the
first block pass and the faster one kept)."""


class HessianOperator(LinearOperator):
    """Hessian of the mean training loss over a fixed set of batches, as a matrix-free symmetric operator.

    Args:
        model: the model (a DDP / ``torch.compile`` wrapper is unwrapped; FSDP and DeepSpeed are refused).
        batches: the Hessian dataset: an iterable of batches (mappings with ``labels``, or tuples whose first element
            sets the sample count). It is materialised once, so a shuffling ``DataLoader`` still yields a fixed
            operator. Under ``torch.distributed`` pass this rank's shard.
        loss_fn: ``loss_fn(model, batch) -> scalar`` mean loss of a batch over its loss items. If it takes a
            ``num_items_in_batch`` keyword it gets the batch's item count (0-d int64 tensor) and may return
            ``sum / num_items_in_batch``; it may return ``(loss, num_items)`` to set the count itself.
            Default: the loss in ``model(**batch)`` (``outputs["loss"]`` / ``outputs[0]`` of a tuple).
        params: explicit parameters spanning the space (default: the trainable parameters, filtered by
            ``parameter_filter``). Each must be a parameter of ``model``.
        parameter_filter: regular expression on parameter names selecting the parameters (ignored with ``params``).
        distributed: reduce products across processes. ``None`` detects an initialised process group; ``False``
            gives this rank's own Hessian (per-rank analysis).
        eval_mode: evaluate in eval mode (dropout off, BatchNorm with its running statistics). With ``False`` the
            modules keep their own modes: train-mode BatchNorm normalises each Hessian batch with that batch's
            statistics (so the Hessian then depends on the batch composition, as the training loss does) and
            leaves its running statistics untouched. Either way the model's modes and buffers are unchanged
            afterwards.
        progress: show a tqdm bar over the batches of each pass.
        num_items_fn: ``num_items_fn(batch) -> int``, the number of loss items of a batch. Default: labels
            ``!= -100`` of mapping batches (shifted by one for causal LMs, ``shift_labels`` if present), else the
            number of samples.
        block_product: see :data:`BlockProduct`.
        shard_vectors: split the vectors across the processes (needs ``torch.distributed`` with the products
            reduced): every block, product and gradient is then this rank's rows of the flat parameter vector,
            ``[local_dim, m]``, rows ``row_start … row_start + local_dim`` of an even split by parameter order (rank
            r holds rows ``[r·c, min(d, (r + 1)·c))``, ``c = ceil(d / world_size)``; see
            :class:`~hf_subspace._shards.RowShard`). Solver memory per process then falls by the number of processes;
            only ``columns_per_pass`` columns exist at full length at a time, during a product.
        columns_per_pass: with ``shard_vectors``, how many columns of a block are gathered to full length and
            multiplied per pass over the data (default 4: a transient of about ``2·4 + 1`` full-length vectors, at
            the cost of one forward and gradient per extra pass; ``None`` multiplies the whole block in one pass).
        product: see :data:`Product`. Finite differences cost two gradients per column and batch, keep the same
            contract (counts, loss items, finite checks) and restore the parameters bitwise after every product.
        graph_cache_bytes: memory budget in bytes for keeping the batches' first-order graphs (forward pass and
            ``create_graph`` gradient) across products inside a :meth:`reusing_graphs` scope (the eigensolvers,
            :func:`~hf_subspace.hessian_trace` and :func:`~hf_subspace.spectral_density` open one): the batches whose
            graphs fit are then not recomputed by later products at the same parameters. ``None`` (default): a
            quarter of the memory free on the device when the first graph is kept; ``0``: never keep graphs. Kept
            graphs are dropped when any parameter, buffer or batch tensor changes (see :meth:`reusing_graphs`). With
            ``eval_mode=False`` a kept graph also keeps its batch's dropout mask: the products of one scope then share
            one draw instead of drawing one per product.
            Whole vectors with double-backward products only: with ``shard_vectors``, an FSDP2 model or finite
            differences it must be ``None`` or ``0`` (nothing is kept).

    Attributes:
        num_samples: samples in the Hessian dataset (all ranks). num_items: loss items ``N`` (all ranks).
        num_matvecs: Hessian-vector products computed. num_passes: passes over the data.
        num_graphs_built: batch forward passes with a ``create_graph`` gradient built for products (kept graphs that
        are reused do not count).

    Raises:
        ValueError: empty Hessian dataset (no samples or no loss items), no trainable parameters, reduced-precision
            parameters, an unknown ``block_product``, a ``graph_cache_bytes`` that is negative or set where graphs
            cannot be kept.
        NotImplementedError: sharded-parameter setups (FSDP, DeepSpeed ZeRO, DTensor).
    """

    checks_finite: bool = True
    """Every pass refuses non-finite products, losses and gradients itself (``FloatingPointError``), so callers such
    as the eigensolvers need not check the products again."""

    def __init__(
        self,
        model: nn.Module,
        batches: Iterable[Any],
        loss_fn: LossFn | None = None,
        *,
        params: Sequence[torch.Tensor] | None = None,
        parameter_filter: str | None = None,
        distributed: bool | None = None,
        eval_mode: bool = True,
        progress: bool = False,
        num_items_fn: NumItemsFn | None = None,
        block_product: BlockProduct = "auto",
        shard_vectors: bool = False,
        columns_per_pass: int | None = 4,
        product: Product | None = None,
        graph_cache_bytes: int | None = None,
    ) -> None:
        self.model = unwrap_model(model)
        self.params: list[torch.Tensor]
        if params is None:
            named = select_parameters(self.model, parameter_filter)
            self.param_names = [n for n, _ in named]
            self.params = [p for _, p in named]
        else:
            self.params = list(params)
            if not self.params:
                raise ValueError("params is empty: the Hessian needs at least one parameter")
            by_id = {id(p): n for n, p in self.model.named_parameters()}
            missing = [i for i, p in enumerate(self.params) if id(p) not in by_id]
            if missing:
                raise ValueError(f"params[{missing[0]}] is not a parameter of the model")
            self.param_names = [by_id[id(p)] for p in self.params]
        dtypes = {p.dtype for p in self.params}
        if len(dtypes) != 1 or not dtypes <= {torch.float32, torch.float64}:
            raise ValueError(
                f"HessianOperator computes in float32 or float64, but the parameters are {sorted(map(str, dtypes))}. "
                "Keep full-precision master weights (mixed precision via autocast, as Trainer's bf16/fp16 do)."
            )
        if block_product not in ("auto", "loop", "batched"):
            raise ValueError(f"block_product={block_product!r}: choose 'auto', 'loop' or 'batched'.")
        self.fsdp = is_fsdp2(self.model)
        if product not in (None, "double_backward", "finite_difference"):
            raise ValueError(f"product={product!r}: choose 'double_backward' or 'finite_difference'.")
        if self.fsdp and product == "double_backward":
            raise ValueError(
                "product='double_backward' is unavailable for an FSDP2 model (it computes with gathered copies of "
                "its sharded parameters): leave product unset or pass product='finite_difference'."
            )
        self.product: Product = product or ("finite_difference" if self.fsdp else "double_backward")
        if self.product == "finite_difference" and block_product == "batched":
            raise ValueError(
                "block_product='batched' vectorises double-backward products; finite-difference products (FSDP2 "
                "models, product='finite_difference') take one column at a time: leave block_product unset."
            )
        self.block_product: BlockProduct = block_product
        self._block_method: str | None = None if block_product == "auto" else block_product
        self.dim = sum(p.numel() for p in self.params)
        self.loss_fn: LossFn = loss_fn or default_loss_fn
        self.eval_mode = eval_mode
        self.progress = progress
        self.is_distributed = dist.is_distributed() if distributed is None else bool(distributed)
        if self.is_distributed and not dist.is_distributed():
            raise ValueError("distributed=True but no torch.distributed process group with >1 process is initialised")
        if shard_vectors and not self.is_distributed and dist.is_distributed():
            raise ValueError("shard_vectors=True needs the products reduced across processes: drop distributed=False")
        if columns_per_pass is not None and columns_per_pass < 1:
            raise ValueError(f"columns_per_pass={columns_per_pass} must be >= 1 (or None for the whole block)")
        self.rows: RowShard | None = RowShard.current(self.dim) if shard_vectors and not self.fsdp else None
        self._fsdp_rows = local_rows(self.params) if self.fsdp else None
        self.columns_per_pass = columns_per_pass

        if isinstance(batches, Mapping):
            batches = [batches]
        self.batches = list(batches)
        self.batch_sizes = [batch_num_samples(b) for b in self.batches]
        self.shift_labels = model_shifts_labels(self.model)
        count = num_items_fn or functools.partial(count_loss_items, shift_labels=self.shift_labels)
        self.batch_items = [int(count(b)) for b in self.batches]
        local = torch.tensor([float(sum(self.batch_sizes)), float(sum(self.batch_items))], dtype=torch.float64)
        if self.is_distributed:
            dist.all_reduce_sum(local)
        self.num_samples, self.num_items = int(local[0].item()), int(local[1].item())
        if self.num_samples == 0:
            raise ValueError(
                "The Hessian dataset is empty (no batches, or batches with no samples); pass at least one batch."
            )
        if self.num_items == 0:
            raise ValueError(
                "The Hessian dataset has no loss items (every label is -100, or a causal LM with 1-token sequences); "
                "pass batches with labels, or num_items_fn= if your loss counts items differently."
            )
        self.num_matvecs = 0
        self.num_passes = 0
        self.num_graphs_built = 0
        self._cache: tuple[Any, float, torch.Tensor | None] | None = None
        self._graphs = GraphCache(graph_cache_bytes)
        if graph_cache_bytes and (self.shards_vectors or self.product != "double_backward"):
            raise ValueError(
                f"graph_cache_bytes={graph_cache_bytes}: first-order graphs are only kept for whole vectors with "
                "double-backward products, not with shard_vectors, an FSDP2 model or product='finite_difference'. "
                "Leave graph_cache_bytes unset (or 0)."
            )

    @property
    def dtype(self) -> torch.dtype:  # type: ignore[override]
        return self.params[0].dtype

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        # Read live: a Trainer may move the model after the operator was built.
        return self.params[0].device

    # -- split vectors (LinearOperator hooks) ------------------------------------------------------------------
    @property
    def local_dim(self) -> int:
        if self._fsdp_rows is not None:
            return int(self._fsdp_rows.numel())
        return self.dim if self.rows is None else self.rows.size

    @property
    def row_start(self) -> int:
        return 0 if self.rows is None else self.rows.start

    @property
    def local_rows(self) -> slice | torch.Tensor:
        """This rank's rows of the flat vector: a range, or (FSDP2) the indices of every parameter's local shard."""
        return (
            self._fsdp_rows if self._fsdp_rows is not None else slice(self.row_start, self.row_start + self.local_dim)
        )

    @property
    def shards_vectors(self) -> bool:
        return self.rows is not None or self.fsdp

    def reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if not self.shards_vectors else dist.all_reduce_sum(tensor)

    # -- passes over the data ---------------------------------------------------------------------------------
    def _iter_batches(self, desc: str, reuse: bool = False) -> Iterator[tuple[int, int, Any, BatchGraph | None]]:
        """``(index, loss items, batch, kept graph)`` of the batches with items: with ``reuse``, the batch's kept
        graph and ``None`` for the batch where there is one; otherwise ``None`` for the graph and the batch on the
        device."""
        items = enumerate(zip(self.batch_items, self.batches))
        if self.progress:
            items = tqdm(items, total=len(self.batches), desc=desc, leave=False)
        for index, (n, batch) in items:
            if n > 0:
                kept = self._graphs.get(index) if reuse else None
                yield index, n, None if kept is not None else to_device(batch, self.device), kept

    @contextlib.contextmanager
    def reusing_graphs(self) -> Iterator[None]:
        """Keep the batches' first-order graphs across the products computed inside (up to ``graph_cache_bytes``).

        Scopes nest; the graphs are freed when the outermost one ends. A product reuses the kept graphs only while
        :func:`~hf_subspace._model_state.state_fingerprint` is unchanged (identity, storage and in-place version of
        every parameter, buffer and batch tensor): an optimizer step or ``load_state_dict`` inside the scope is
        seen; a write that bypasses the version counter (``p.data.add_(...)``) is not, so leave the scope (or do
        not open one) around such changes. Whole vectors with double-backward products only; elsewhere, and with
        ``graph_cache_bytes=0``, products are computed as without the scope.
        """
        self._graphs.depth += 1
        try:
            yield
        finally:
            self._graphs.depth -= 1
            if self._graphs.depth == 0:
                self._graphs.clear()

    @property
    def _reuse(self) -> bool:
        return self._graphs.active and self.rows is None and not self.fsdp and self.product == "double_backward"

    def _run(self, sums: _Sums, desc: str, vectors: torch.Tensor | None = None) -> None:
        """One pass: :meth:`_pass`, or for an FSDP2 model :func:`~hf_subspace._fsdp.fsdp_pass`."""
        if self.fsdp:
            fsdp_pass(self, sums, vectors)
        else:
            self._pass(sums, desc, vectors)

    def _pass(self, sums: _Sums, desc: str, vectors: torch.Tensor | None = None) -> None:
        """Accumulate one pass into ``sums`` (unreduced): the loss, and the gradient and the products of the rows of
        ``vectors`` (``[m, d]``, one full-length vector per row) where ``sums`` has room for them."""
        m = sums.num_products
        want_grad = sums.grad is not None or m > 0
        products = split_like(sums.products[:, : self.dim], self.params) if m else []
        grad_parts = split_like(sums.grad, self.params) if sums.grad is not None else []
        v_parts = split_like(vectors, self.params) if vectors is not None and m else []
        exact = self.product == "double_backward"
        steps = [] if exact or not m else difference_steps(self.params, vectors)  # type: ignore[arg-type]
        saved = [p.detach().clone() for p in self.params] if steps else []
        reuse = self._reuse and m > 0
        # What exists anyway (not counted against the graph budget), read before weights are upcast for the pass.
        exclude = [*self.model.parameters(), *self.model.buffers(), *batch_tensors(self.batches)] if reuse else []
        with (
            exact_mode(self.model, self.eval_mode, self.device),
            full_precision_weights(self.model, self.dtype),
            torch.set_grad_enabled(want_grad),
        ):
            for index, items, batch, graph in self._iter_batches(desc, reuse):
                keep = graph is not None
                if graph is None:
                    graph = self._batch_graph(batch, items, want_grad, create_graph=exact and m > 0)
                    keep = reuse and self._graphs.offer(index, graph, self.device, exclude)
                n, grads = graph.items, graph.grads
                if n == 0:
                    continue
                sums.loss += n * graph.loss.to(sums.loss.dtype)
                sums.count += n
                if grads is None:
                    continue
                for out, g in zip(grad_parts, grads):
                    if g is not None:
                        out.add_(g.detach(), alpha=n)
                # Gradients that do not depend on the parameters (unused or linear ones) have zero curvature.
                active = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
                if steps:
                    difference_products_(
                        functools.partial(self._batch_gradient, batch, items),
                        self.params,
                        saved,
                        v_parts,
                        steps,
                        products,
                        n,
                    )
                elif m and active:
                    outputs: list[torch.Tensor] = [grads[i] for i in active]  # type: ignore[misc]
                    self._block_products(outputs, [v_parts[i] for i in active], products, n, m, keep)
                del graph, grads
        self.num_passes += 1

    def _batch_graph(self, batch: Any, items: int, want_grad: bool, create_graph: bool) -> BatchGraph:
        """One batch's loss, and its gradient when wanted (with its graph for products)."""
        loss, n = evaluate_loss(self.loss_fn, self.model, batch, items, self.device)
        loss = loss.to(self.dtype)
        if n == 0 or not want_grad or not loss.requires_grad:
            return BatchGraph(n, loss.detach(), None)
        grads = torch.autograd.grad(loss, self.params, create_graph=create_graph, allow_unused=True)
        self.num_graphs_built += int(create_graph)
        return BatchGraph(n, loss.detach(), grads)

    def _batch_gradient(self, batch: Any, items: int) -> tuple[torch.Tensor | None, ...]:
        """One batch's gradient at the current parameters (first order only: the finite-difference product)."""
        loss, _ = evaluate_loss(self.loss_fn, self.model, batch, items, self.device)
        return torch.autograd.grad(loss.to(self.dtype), self.params, allow_unused=True)

    def _block_products(
        self,
        outputs: list[torch.Tensor],
        vectors: list[torch.Tensor],
        products: list[torch.Tensor],
        n: int,
        m: int,
        keep: bool = False,
    ) -> None:
        """``products[i][j] += n · (∂ outputs / ∂ params[i]) · vectors[:, j]`` for all columns, by the chosen method
        (the graph is kept afterwards with ``keep``)."""
        method = self._block_method
        if method is None:  # "auto": the loop on CPU; on CUDA time both once on this batch and keep the faster
            if self.device.type == "cuda" and m >= 2:
                self._block_method = choose_block_method(outputs, self.params, vectors, products, n, keep)
                return
            method = "loop"
        if method == "batched":
            hv = batched_or_refuse(outputs, self.params, vectors, self, retain_graph=keep)
            for out, h in zip(products, hv):
                if h is not None:
                    out.add_(h, alpha=n)
            return
        column_loop(outputs, self.params, vectors, products, n, keep)

    def _reduce(self, sums: _Sums, what: str, local_out: torch.Tensor | None = None) -> None:
        """Sum over the ranks, divide by the item count, and refuse non-finite results (the one check per pass).

        With ``local_out`` (split vectors) the products are reduce-scattered into it (this rank's rows, ``[rows, m]``)
        and its finiteness travels to every rank in ``sums.flag``, so all ranks raise together.
        """
        head = sums.buffer
        if self.fsdp:  # products and gradient come summed over the ranks from the backward's reduce-scatter
            sums.flag.fill_(0.0 if _finite(sums.buffer[3:]) else 1.0)
            head = sums.buffer[:3]
        elif local_out is not None:
            assert self.rows is not None
            self.rows.reduce_scatter_columns(sums.products, local_out)
            sums.flag.fill_(0.0 if _finite(local_out) else 1.0)
            head = sums.head
        if self.is_distributed:
            dist.all_reduce_sum(head)
        count = float(sums.count.item())
        if count <= 0:
            raise ValueError("No loss items in the Hessian dataset: loss_fn returned 0 items for every batch.")
        self.num_items = round(count)
        sums.buffer[1:].div_(count)
        if local_out is not None:
            local_out.div_(count)
        # aminmax propagates NaN and ±inf and allocates nothing; a float64 sum or isfinite would copy the whole buffer.
        if not _finite(head if local_out is not None else sums.buffer) or float(sums.flag.item()) != 0.0:
            raise FloatingPointError(
                f"The {what} over the Hessian dataset is not finite (NaN or inf): the parameters or the loss have "
                "diverged, or the Hessian dataset holds NaN/inf. Lower the learning rate or check the data."
            )

    def _fingerprint(self) -> Any:
        return state_fingerprint(self.model, self.batches, self.eval_mode)

    def _remember(self, loss: torch.Tensor, grad: torch.Tensor | None) -> Any:
        key = self._fingerprint()
        self._cache = (key, float(loss.item()), None if grad is None else grad.clone())
        return key

    def _cached(self, need_grad: bool) -> tuple[float, torch.Tensor | None] | None:
        cache = self._cache
        if cache is None or (need_grad and cache[2] is None):
            return None
        if cache[0] != self._fingerprint():
            return None
        return cache[1], cache[2]

    def matmat(self, block: torch.Tensor) -> torch.Tensor:
        """Hessian times a block of vectors ``[d, m]`` (split vectors: this rank's rows, ``[local_dim, m]``).

        Whole vectors: one pass over the Hessian dataset. Split vectors: the columns are gathered to full length
        ``columns_per_pass`` at a time (one pass each) and the products reduce-scattered back to this rank's rows.
        Either way the first pass yields the loss and its gradient, kept for :meth:`loss_and_gradient` / :meth:`loss`.

        Returns:
            ``H @ block``, same shape as ``block`` (identical on every rank for whole vectors).

        Raises:
            FloatingPointError: if a product, the loss or the gradient is not finite (on every rank at once).
        """
        self._check_block(block)
        m = block.shape[1]
        block = block.detach().to(device=self.device, dtype=self.dtype)
        if self.rows is None:
            rows = block.T.contiguous()  # [m, d]: row j is vector j (FSDP2: [m, local_dim], the local shards)
            sums = _Sums.new(self.local_dim, m, dtype=self.dtype, device=self.device)
            if self._reuse:
                self._graphs.check(self._fingerprint())
            self._run(sums, "Hessian-vector products", rows)
            del rows
            self._reduce(sums, "Hessian-vector product")
            out = sums.products.T.contiguous()
        else:
            out = torch.empty(m, self.local_dim, dtype=self.dtype, device=self.device).T  # each column contiguous
            step = self.columns_per_pass or m
            for first in range(0, m, step):
                cols = slice(first, min(m, first + step))
                full = self.rows.gather_columns(block[:, cols])  # the only full-length copies: [columns, d]
                sums = _Sums.new(
                    self.dim,
                    full.shape[0],
                    grad=first == 0,
                    width=self.rows.padded,
                    dtype=self.dtype,
                    device=self.device,
                )
                self._pass(sums, "Hessian-vector products", full)
                del full
                self._reduce(sums, "Hessian-vector product", out[:, cols])
                if first == 0:
                    assert sums.grad is not None
                    self._remember(sums.loss, sums.grad[self.rows.start : self.rows.stop])
            self.num_matvecs += m
            return out
        self.num_matvecs += m
        key = self._remember(sums.loss, sums.grad)
        if self._reuse:
            self._graphs.seal(key)
        return out

    def loss_and_gradient(self) -> tuple[float, torch.Tensor]:
        """Mean loss and its gradient over the whole Hessian dataset (all ranks): ``[d]``, or this rank's rows
        ``[local_dim]`` with split vectors.

        Computed under the same conditions as the products (eval mode, full precision), so it is the gradient
        whose alignment with the dominant subspace the paper measures. Every product pass computes it too; while no
        parameter, buffer or batch tensor has changed since, that result is returned without another pass.

        Raises:
            FloatingPointError: if the loss or the gradient is not finite.
        """
        cached = self._cached(need_grad=True)
        if cached is not None:
            return cached[0], cached[1].clone()  # type: ignore[union-attr]
        sums = _Sums.new(self.local_dim if self.fsdp else self.dim, dtype=self.dtype, device=self.device)
        self._run(sums, "full-batch gradient")
        self._reduce(sums, "loss or gradient")
        assert sums.grad is not None
        grad = sums.grad if self.rows is None else sums.grad[self.rows.start : self.rows.stop]
        self._remember(sums.loss, grad)
        return float(sums.loss.item()), grad.clone()

    def loss(self) -> float:
        """Mean loss over the whole Hessian dataset (all ranks), without gradients (reused from the last pass if
        nothing changed since).

        Raises:
            FloatingPointError: if the loss is not finite.
        """
        cached = self._cached(need_grad=False)
        if cached is not None:
            return cached[0]
        sums = _Sums.new(0, grad=False, dtype=torch.float64, device=self.device)
        self._run(sums, "loss")
        self._reduce(sums, "loss")
        self._remember(sums.loss, None)
        return float(sums.loss.item())
