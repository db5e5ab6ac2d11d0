"""Loss and weight-initialisation helpers shared by the paper's models.

The paper trains with the mean-squared-error loss on one-hot targets,
``L = mean over the batch of ½ · Σ_classes (logit − onehot)²``; cross entropy is available for comparison.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

__all__ = ["LOSS_TYPES", "check_loss_type", "classification_loss", "init_module_weights", "num_labels_of"]

LOSS_TYPES: tuple[str, ...] = ("mse", "cross_entropy")


def num_labels_of(config: Any) -> int:
    """``config.num_labels`` as an ``int`` (the width of the classifier).

    Raises:
        ValueError: when the config has no label count.
    """
    if config.num_labels is None:
        raise ValueError(f"{type(config).__name__} has no num_labels; pass num_labels=... or id2label=...")
    return int(config.num_labels)


def check_loss_type(loss_type: str) -> str:
    """Validate a ``loss_type`` config value.

    Args:
        loss_type: ``"mse"`` or ``"cross_entropy"``.

    Returns:
        The value, unchanged.

    Raises:
        ValueError: for any other value.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    return loss_type


def _targets(labels: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Return ``(targets, is_dense)``: int class ids of shape [B], or float targets of shape [B, C]."""
    num_labels = logits.shape[-1]
    if labels.is_floating_point() and labels.dim() == logits.dim() and labels.shape[-1] == num_labels:
        if labels.shape != logits.shape:
            raise ValueError(f"float labels must have shape {tuple(logits.shape)}, got {tuple(labels.shape)}")
        return labels.to(logits.dtype), True
    ids = labels.reshape(-1).long()
    if ids.numel() != logits.shape[0]:
        raise ValueError(
            f"labels must be class ids of shape [{logits.shape[0]}] or float targets of shape "
            f"{tuple(logits.shape)}, got {tuple(labels.shape)}"
        )
    return ids, False


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, loss_type: str = "mse") -> torch.Tensor:
    """Batch-mean classification loss.

    Args:
        logits: ``[B, C]`` model outputs.
        labels: ``[B]`` integer class ids, or ``[B, C]`` float targets (one-hot or soft labels).
        loss_type: ``"mse"`` (½·Σ_c (logit_c − target_c)², averaged over the batch) or ``"cross_entropy"``.

    Returns:
        A scalar tensor that supports double backward.

    Raises:
        ValueError: for an unknown ``loss_type`` or labels of the wrong shape.
    """
    check_loss_type(loss_type)
    targets, is_dense = _targets(labels, logits)
    if loss_type == "mse":
        if not is_dense:
            targets = F.one_hot(targets, num_classes=logits.shape[-1]).to(logits.dtype)
        return 0.5 * (logits - targets).pow(2).sum(dim=-1).mean()
    return F.cross_entropy(logits, targets)


def init_module_weights(module: nn.Module, std: float | None = None) -> None:
    """Initialise one module in place, skipping tensors that ``from_pretrained`` already loaded.

    With ``std=None`` linear and convolution layers get PyTorch's own default initialisation (Kaiming-uniform weights
    with ``a=√5``, biases uniform in ``±1/√fan_in``) and embeddings ``N(0, 1)``; with a float ``std`` they get
    ``N(0, std²)`` weights and zero biases. Layer norms get unit weights and zero biases. The padding row of an
    embedding is zeroed.

    Args:
        module: a single (sub)module; children are not visited.
        std: optional standard deviation, see above.
    """
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
        if std is None:
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in = module.weight[0].numel()
                bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                init.uniform_(module.bias, -bound, bound)
        else:
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        init.normal_(module.weight, mean=0.0, std=1.0 if std is None else std)
        if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            init.ones_(module.weight)
        if module.bias is not None:
            init.zeros_(module.bias)
