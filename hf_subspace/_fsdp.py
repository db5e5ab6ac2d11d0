"""One Hessian pass over an FSDP2 model (``fully_shard``): vectors, products and gradient as local shards.

FSDP2 computes with gathered copies of its sharded (DTensor) parameters, so a gradient can only come from the
engine's own backward, which reduce-scatters it to each rank's shard; double backward is unavailable, and products
are central differences of such gradients (:mod:`hf_subspace._finite_difference`). Each rank perturbs its own shards
of θ by ε v, so every forward sees the global θ ± ε v. A backward is a collective: every rank runs as many forwards and
backwards as the rank with the most Hessian batches, the extra ones on a batch weighted 0.

This rank's rows of a flat vector are every parameter's local shard flattened, in parameter order
(:func:`local_rows`; the layout of a basis over them: :func:`vector_layout`). A ``SubspaceTrainer`` builds its
operator before accelerate's FSDP2 plugin shards the model in place inside ``train()``; :func:`follow_fully_shard`
then points the operator at the sharded parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from . import distributed as dist
from ._finite_difference import difference_products_, difference_steps
from ._loss_items import evaluate_loss
from ._model_state import exact_mode, is_fsdp2
from ._params import split_like
from ._pass_sums import Sums, to_device
from ._shards import LocalShards, RowShard

__all__ = ["follow_fully_shard", "fsdp_pass", "local_rows", "vector_layout"]


def local_rows(params: Sequence[Any]) -> torch.Tensor:
    """The indices (int64) in the flat global vector of this rank's entries: each DTensor's local shard in order."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    parts, offset = [], 0
    for p in params:
        shape, start = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
        inner = 1
        for size in p.shape[1:]:
            inner *= size
        first = offset + int(start[0]) * inner if len(start) else offset
        parts.append(torch.arange(first, first + int(torch.Size(shape).numel())))
        offset += p.numel()
    return torch.cat(parts)


def vector_layout(op: Any) -> RowShard | LocalShards | None:
    """How ``op``'s vectors are held on this process: FSDP2 shards, a row split (``shard_vectors``), or whole."""
    if getattr(op, "fsdp", False):
        return LocalShards.of(op.params, op.local_rows)
    return getattr(op, "rows", None)


def follow_fully_shard(op: Any) -> bool:
    """Point ``op`` (a :class:`~hf_subspace.hessian.HessianOperator` built on an unsharded model) at the DTensor
    parameters of the same parameter names once its model has been sharded in place by FSDP2; products switch to
    finite differences, vectors to the local shards. Returns True when it changed something.

    Raises:
        RuntimeError: a covered parameter is no longer a parameter of the model.
    """
    if getattr(op, "fsdp", False) or not is_fsdp2(op.model):
        return False
    named = dict(op.model.named_parameters())
    missing = [n for n in op.param_names if n not in named]
    if missing:
        raise RuntimeError(f"After FSDP2 sharding the model has no parameter {missing[0]!r}; build the trainer anew.")
    op.params = [named[n] for n in op.param_names]
    op.fsdp, op.rows, op.product = True, None, "finite_difference"
    op._fsdp_rows = local_rows(op.params)
    op._cache = None
    return True


def fsdp_pass(op: Any, sums: Sums, vectors: torch.Tensor | None) -> None:
    """Accumulate one pass of ``op`` (a :class:`~hf_subspace.hessian.HessianOperator` of an FSDP2 model) into
    ``sums``: loss and count of this rank's batches, and, already summed over the ranks by the backward's
    reduce-scatter, this rank's shard of the gradient and of the products of the rows of ``vectors``
    (``[m, local_dim]``)."""
    params, world = op.params, dist.world_size()
    local = [p.to_local() for p in params]  # views of the shards: perturbing them perturbs θ
    m = sums.num_products
    products = split_like(sums.products, local) if m else []
    grad_out = split_like(sums.grad, local) if sums.grad is not None else []
    v_parts = split_like(vectors, local) if vectors is not None and m else []
    steps = difference_steps(local, vectors, reduce=dist.all_reduce_sum) if vectors is not None and m else []
    saved = [t.detach().clone() for t in local]
    counts = torch.zeros(world, dtype=torch.float64)
    counts[dist.rank()] = len(op.batches)
    rounds = int(dist.all_reduce_sum(counts).max().item())
    kept = [p.grad for p in params]  # the training step's gradients, put back afterwards
    try:
        with exact_mode(op.model, op.eval_mode, op.device):
            for i in range(rounds):
                n = op.batch_items[i] if i < len(op.batches) else 0
                batch = dist_batch(op, i)

                def gradient(batch: Any = batch, n: int = n) -> list[torch.Tensor | None]:
                    return _gradient(op, batch, n, world)[1]

                if sums.grad is None and not m:
                    with torch.no_grad():
                        loss, _ = evaluate_loss(op.loss_fn, op.model, batch, max(n, 1), op.device)
                else:
                    loss, grads = _gradient(op, batch, n, world)
                    for out, g in zip(grad_out, grads):
                        if g is not None:
                            out.add_(g)
                    if steps:
                        difference_products_(gradient, local, saved, v_parts, steps, products, 1.0)
                if n:
                    sums.loss += n * loss.detach().to(sums.loss.dtype)
                    sums.count += n
    finally:
        for p, g in zip(params, kept):
            p.grad = g
    op.num_passes += 1


def dist_batch(op: Any, index: int) -> Any:
    """Batch ``index`` of this rank on the device, or (past this rank's last batch) its first one, to weight 0."""
    if not op.batches:
        raise ValueError(
            "Every process needs at least one Hessian batch with an FSDP2 model (a backward is collective)."
        )
    return to_device(op.batches[index if index < len(op.batches) else 0], op.device)


def _gradient(op: Any, batch: Any, n: int, world: int) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """The batch's loss and this rank's shard of Σ_ranks ``n · ∇L`` (FSDP2's reduce-scatter averages over the
    ``world`` ranks, hence the factor)."""
    for p in op.params:
        p.grad = None
    loss, _ = evaluate_loss(op.loss_fn, op.model, batch, max(n, 1), op.device)
    (loss.to(op.dtype) * float(n * world)).backward()
    grads = [None if p.grad is None else p.grad.to_local().detach().clone() for p in op.params]
    for p in op.params:
        p.grad = None
    return loss, grads
