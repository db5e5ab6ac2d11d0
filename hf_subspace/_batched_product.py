"""The vectorised block product (``block_product="batched"``), refused with a clear error where the model's kernels
cannot be vmapped."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["batched_or_refuse"]


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
