"""Batches on the device, and the sums one pass of a :class:`~hf_subspace.hessian.HessianOperator` accumulates, as named views of one buffer."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Sums", "finite", "to_device"]


def finite(tensor: torch.Tensor) -> bool:
    """No NaN or inf in ``tensor`` (aminmax: no temporary of its size)."""
    if tensor.numel() == 0:
        return True
    flat = tensor if tensor.is_contiguous() else tensor.T if tensor.T.is_contiguous() else tensor.contiguous()
    low, high = torch.aminmax(flat)
    return math.isfinite(float(low)) and math.isfinite(float(high))


@dataclass
class Sums:
    """The sums of one pass as named views of one flat buffer ``[count, loss, flag, gradient, products]``, so that
    one all-reduce carries them all (split vectors: one reduce-scatter of the products, one all-reduce of the rest).

    ``count`` = Σ n_b, ``loss`` = Σ n_b L_b, ``flag`` = 1 where a rank found a non-finite product, ``grad`` = Σ n_b ∇L_b
    (``[d]``, or None), ``products`` = ``[m, width]`` with row j = Σ n_b H_b v_j in its first ``d`` entries.
    """

    buffer: torch.Tensor
    count: torch.Tensor
    loss: torch.Tensor
    flag: torch.Tensor
    grad: torch.Tensor | None
    products: torch.Tensor

    @classmethod
    def new(
        cls,
        dim: int,
        num_products: int = 0,
        *,
        grad: bool = True,
        width: int | None = None,
        dtype: torch.dtype,
        device: torch.device,
    ) -> Sums:
        width = dim if width is None else width
        head = 3 + (dim if grad else 0)
        buffer = torch.zeros(head + num_products * width, dtype=dtype, device=device)
        return cls(
            buffer,
            buffer[0],
            buffer[1],
            buffer[2],
            buffer[3:head] if grad else None,
            buffer[head:].view(num_products, width),
        )

    @property
    def num_products(self) -> int:
        return int(self.products.shape[0])

    @property
    def head(self) -> torch.Tensor:
        """Everything but the products."""
        return self.buffer[: self.buffer.numel() - self.products.numel()]


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` (a tensor, or mappings and sequences of them) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
