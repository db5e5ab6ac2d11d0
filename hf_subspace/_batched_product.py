"""The block product of a batch's gradient graph: the loop over the columns, the vectorised backward
(``block_product="batched"``, refused with a clear error where the model's kernels cannot be vmapped), and the timed
choice between them (``"auto"`` on CUDA)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["batched_or_refuse", "choose_block_method", "column_loop"]

logger = logging.getLogger(__name__)


def column_loop(
    outputs: Sequence[torch.Tensor],
    params: Sequence[torch.Tensor],
    vectors: Sequence[torch.Tensor],
    products: Sequence[torch.Tensor],
    n: int,
    keep: bool = False,
) -> None:
    """``products[i][j] += n · (∂ outputs / ∂ params[i]) · vectors[i][j]``: one backward per column ``j`` through the
    retained graph (kept after the last column with ``keep``)."""
    m = int(vectors[0].shape[0])
    for j in range(m):
        hv = torch.autograd.grad(
            outputs, params, grad_outputs=[v[j] for v in vectors], retain_graph=keep or j < m - 1, allow_unused=True
        )
        for out, h in zip(products, hv):
            if h is not None:
                out[j].add_(h, alpha=n)


def choose_block_method(
    outputs: Sequence[torch.Tensor],
    params: Sequence[torch.Tensor],
    vectors: Sequence[torch.Tensor],
    products: Sequence[torch.Tensor],
    n: int,
    keep: bool,
) -> str:
    """Time the loop (which adds this batch's products) and the vectorised backward once on a CUDA batch; the
    faster name, ``"loop"`` or ``"batched"``."""
    device = outputs[0].device

    def timed(fn: Any) -> float:
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        return time.perf_counter() - start

    loop_s = timed(lambda: column_loop(outputs, params, vectors, products, n, keep=True))
    try:
        batched_s = timed(
            lambda: torch.autograd.grad(
                outputs, params, grad_outputs=vectors, retain_graph=keep, is_grads_batched=True, allow_unused=True
            )
        )
    except RuntimeError as err:  # an op without a batching rule: keep the loop
        logger.info("HessianOperator: vectorised block product unavailable (%s); using the column loop", err)
        return "loop"
    method = "batched" if batched_s < loop_s else "loop"
    m = int(vectors[0].shape[0])
    logger.info("HessianOperator: block of %d: loop %.4fs, batched %.4fs -> %s", m, loop_s, batched_s, method)
    return method


def batched_or_refuse(
    outputs: Sequence[torch.Tensor],
    params: Sequence[torch.Tensor],
    vectors: Sequence[torch.Tensor],
    owner: Any,
    retain_graph: bool = False,
) -> tuple[torch.Tensor | None, ...]:
    r"""All columns of :math:`\partial(\text{outputs})/\partial\theta \cdot V` in one vectorised backward.

    ``is_grads_batched`` runs the backward under ``vmap``; some kernels have no batching rule (e.g. a convolution's
    backward on CPU: ``NYI: querying is_contiguous inside of vmap``). The first call on ``owner`` (a
    :class:`~hf_subspace.HessianOperator`) is the probe: if it fails, a ``ValueError`` names the option and the fix,
    instead of a raw ``RuntimeError`` from deep inside autograd; later calls run unguarded.

    Raises:
        ValueError: when the model cannot be differentiated under ``vmap``.
    """
    if getattr(owner, "_batched_probed", False):
        return torch.autograd.grad(
            outputs, params, grad_outputs=vectors, retain_graph=retain_graph, is_grads_batched=True, allow_unused=True
        )
    try:
        result = torch.autograd.grad(
            outputs, params, grad_outputs=vectors, retain_graph=retain_graph, is_grads_batched=True, allow_unused=True
        )
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[0][:200]
        raise ValueError(
            f"block_product='batched' is not available for this model: its backward cannot be vectorised with "
            f"torch.vmap ({reason}). Use block_product='loop' (or 'auto', which falls back to the loop)."
        ) from err
    owner._batched_probed = True
    return result
