"""Small convolutional classifier (the paper's CIFAR-10 model): [conv 3×3 → ReLU → max-pool 2] × 2 → linear."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import ImageClassifierOutput

from ._loss import check_loss_type, classification_loss, init_module_weights, num_labels_of

__all__ = ["CNNConfig", "CNNForImageClassification", "CNNPreTrainedModel"]


class CNNConfig(PretrainedConfig):
    """Configuration of :class:`CNNForImageClassification`.

    Args:
        num_channels: input channels (3 for CIFAR-10, 1 for MNIST).
        image_size: input height and width (an int for square images, or ``[H, W]``).
        conv_channels: output channels of each convolution block (a list after a JSON round trip).
        kernel_size: square convolution kernel size.
        padding: convolution padding; ``None`` keeps the spatial size (``kernel_size // 2``).
        pool_size: max-pool window and stride after every convolution.
        activation: activation after every convolution, a key of ``transformers.activations.ACT2FN``.
        num_labels: number of classes (passed through to ``PretrainedConfig``; default 10).
        loss_type: ``"mse"`` (the paper's) or ``"cross_entropy"``.
        initializer_range: ``None`` for PyTorch's default initialisation, or the standard deviation of normal weights.
    """

    model_type = "hf_subspace_cnn"

    num_channels: int = 3
    image_size: int | list[int] | tuple[int, int] = 32
    conv_channels: list[int] | tuple[int, ...] = (32, 32)
    kernel_size: int = 3
    padding: int | None = None
    pool_size: int = 2
    activation: str = "relu"
    loss_type: str = "mse"
    initializer_range: float | None = None

    def __post_init__(self, **kwargs):
        if self.id2label is None:
            self.num_labels = kwargs.pop("num_labels", 10)
        self.conv_channels = [int(c) for c in self.conv_channels]
        if not isinstance(self.image_size, int):
            self.image_size = [int(s) for s in self.image_size]
        check_loss_type(self.loss_type)
        if self.activation not in ACT2FN:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of {sorted(ACT2FN)}")
        super().__post_init__(**kwargs)

    def to_diff_dict(self) -> dict[str, Any]:
        """The saved config; always records ``num_labels``: transformers omits a 2-label ``id2label`` (its own
        default), which would reload as this config's default of 10."""
        return {**super().to_diff_dict(), "num_labels": self.num_labels}

    @property
    def image_hw(self) -> tuple[int, int]:
        """``(height, width)`` of the input images."""
        if isinstance(self.image_size, int):
            return self.image_size, self.image_size
        height, width = self.image_size
        return int(height), int(width)

    def feature_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of the feature map fed to the linear head."""
        height, width = self.image_hw
        pad = self.kernel_size // 2 if self.padding is None else self.padding
        for _ in self.conv_channels:
            height = (height + 2 * pad - self.kernel_size + 1) // self.pool_size
            width = (width + 2 * pad - self.kernel_size + 1) // self.pool_size
        if height < 1 or width < 1:
            raise ValueError(f"image_size {self.image_size} is too small for {len(self.conv_channels)} conv blocks")
        channels = self.conv_channels[-1] if self.conv_channels else self.num_channels
        return channels, height, width


class CNNPreTrainedModel(PreTrainedModel):
    """Base class: config class, weight initialisation and input name for the CNN."""

    config_class = CNNConfig
    config: CNNConfig
    base_model_prefix = "cnn"
    main_input_name = "pixel_values"
    accepts_loss_kwargs = False

    def _init_weights(self, module: nn.Module) -> None:
        init_module_weights(module, self.config.initializer_range)


class CNNForImageClassification(CNNPreTrainedModel):
    """Convolution blocks without normalisation layers, followed by a linear classifier.

    Args:
        config: a :class:`CNNConfig`.
    """

    def __init__(self, config: CNNConfig) -> None:
        super().__init__(config)
        pad = config.kernel_size // 2 if config.padding is None else config.padding
        channels = [config.num_channels, *config.conv_channels]
        self.convs = nn.ModuleList(
            nn.Conv2d(c_in, c_out, kernel_size=config.kernel_size, padding=pad) for c_in, c_out in pairwise(channels)
        )
        self.act = ACT2FN[config.activation]
        self.pool = nn.MaxPool2d(config.pool_size)
        c, h, w = config.feature_shape()
        self.classifier = nn.Linear(c * h * w, num_labels_of(config))
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ImageClassifierOutput | tuple:
        """Classify a batch.

        Args:
            pixel_values: ``[B, C, H, W]`` images (``[B, H, W]`` is accepted when ``num_channels == 1``).
            labels: optional ``[B]`` class ids or ``[B, num_labels]`` float targets.
            output_hidden_states: also return the input and the output of every block.
            return_dict: return a tuple when ``False``.

        Returns:
            ``ImageClassifierOutput`` with ``loss`` (when labels are given) and ``logits`` ``[B, num_labels]``.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        x = pixel_values
        if x.dim() == 3 and self.config.num_channels == 1:
            x = x.unsqueeze(1)
        expected = (self.config.num_channels, *self.config.image_hw)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"pixel_values must have shape [B, {', '.join(map(str, expected))}], got {tuple(x.shape)}")
        x = x.to(self.classifier.weight.dtype)
        hidden: list[torch.Tensor] = [x]
        for conv in self.convs:
            x = self.pool(self.act(conv(x)))
            hidden.append(x)
        logits = self.classifier(x.flatten(1))
        loss = classification_loss(logits, labels, self.config.loss_type) if labels is not None else None
        hidden_states = tuple(hidden) if output_hidden_states else None
        if not return_dict:
            out = (logits, hidden_states) if output_hidden_states else (logits,)
            return (loss, *out) if loss is not None else out
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=hidden_states)
