"""Flat vectors ↔ lists of parameter tensors, and selection of the parameters a subspace covers."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch
from torch import nn

__all__ = ["flatten", "select_parameters", "split_like"]


def select_parameters(model: nn.Module, name_pattern: str | None = None) -> list[tuple[str, nn.Parameter]]:
    """Trainable parameters of ``model`` in ``model.named_parameters()`` order.

    Args:
        model: the (unwrapped) module.
        name_pattern: optional regular expression; only parameters whose name it matches (``re.search``) are kept.

    Returns:
        ``(name, parameter)`` pairs with ``requires_grad=True``. Shared (tied) parameters appear once.

    Raises:
        ValueError: if no trainable parameter is left, naming the filter when one was given.
    """
    regex = re.compile(name_pattern) if name_pattern else None
    selected = [
        (name, p) for name, p in model.named_parameters() if p.requires_grad and (regex is None or regex.search(name))
    ]
    if not selected:
        if regex is not None:
            raise ValueError(
                f"No trainable parameter matches the parameter filter {name_pattern!r}; "
                f"trainable parameters are e.g. {[n for n, p in model.named_parameters() if p.requires_grad][:5]}."
            )
        raise ValueError(
            "The model has no trainable parameters (every parameter has requires_grad=False); "
            "unfreeze at least one parameter before building a Hessian."
        )
    return selected


def flatten(tensors: Iterable[torch.Tensor | None], like: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """Concatenate tensors into one flat vector; ``None`` entries become zeros shaped like ``like[i]``."""
    parts = []
    for i, t in enumerate(tensors):
        if t is None:
            if like is None:
                raise ValueError("flatten got None without `like` to size it")
            parts.append(torch.zeros(like[i].numel(), dtype=like[i].dtype, device=like[i].device))
        else:
            parts.append(t.reshape(-1))
    return torch.cat(parts)


def split_like(vector: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Views of a flat vector (or of the last dimension of a ``[..., d]`` block) shaped like ``like``."""
    out, offset = [], 0
    lead = vector.shape[:-1]
    for t in like:
        n = t.numel()
        out.append(vector[..., offset : offset + n].reshape(*lead, *t.shape))
        offset += n
    if offset != vector.shape[-1]:
        raise ValueError(f"vector has {vector.shape[-1]} entries but the parameters have {offset}")
    return out
