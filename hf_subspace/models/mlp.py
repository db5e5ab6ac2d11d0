"""Fully connected classifier (the paper's MNIST model: 784-200-200-10 with tanh)."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import ImageClassifierOutput

from ._loss import check_loss_type, classification_loss, init_module_weights, num_labels_of

__all__ = ["MLPConfig", "MLPForImageClassification", "MLPPreTrainedModel"]


class MLPConfig(PretrainedConfig):
    """Configuration of :class:`MLPForImageClassification`.

    Args:
        input_size: number of input features; ``pixel_values`` are flattened to this length.
        hidden_sizes: widths of the hidden layers (a list after a JSON round trip).
        num_labels: number of classes (passed through to ``PretrainedConfig``; default 10).
        activation: hidden activation, any key of ``transformers.activations.ACT2FN`` (``"tanh"``, ``"relu"``, ...).
        loss_type: ``"mse"`` (the paper's) or ``"cross_entropy"``.
        initializer_range: ``None`` for PyTorch's default initialisation, or the standard deviation of normal weights.
    """

    model_type = "hf_subspace_mlp"

    input_size: int = 784
    hidden_sizes: list[int] | tuple[int, ...] = (200, 200)
    activation: str = "tanh"
    loss_type: str = "mse"
    initializer_range: float | None = None

    def __post_init__(self, **kwargs):
        if self.id2label is None:
            self.num_labels = kwargs.pop("num_labels", 10)
        self.hidden_sizes = [int(h) for h in self.hidden_sizes]
        check_loss_type(self.loss_type)
        if self.activation not in ACT2FN:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of {sorted(ACT2FN)}")
        super().__post_init__(**kwargs)

    def to_diff_dict(self) -> dict[str, Any]:
        """The saved config; always records ``num_labels``: transformers omits a 2-label ``id2label`` (its own
        default), which would reload as this config's default of 10."""
        return {**super().to_diff_dict(), "num_labels": self.num_labels}


class MLPPreTrainedModel(PreTrainedModel):
    """Base class: config class, weight initialisation and input name for the MLP."""

    config_class = MLPConfig
    config: MLPConfig
    base_model_prefix = "mlp"
    main_input_name = "pixel_values"
    accepts_loss_kwargs = False

    def _init_weights(self, module: nn.Module) -> None:
        init_module_weights(module, self.config.initializer_range)


class MLPForImageClassification(MLPPreTrainedModel):
    """Multi-layer perceptron with biases in every layer; ``pixel_values`` of any shape ``[B, ...]`` are flattened.

    Args:
        config: an :class:`MLPConfig`.
    """

    def __init__(self, config: MLPConfig) -> None:
        super().__init__(config)
        sizes = [config.input_size, *config.hidden_sizes]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(sizes))
        self.act = ACT2FN[config.activation]
        self.classifier = nn.Linear(sizes[-1], num_labels_of(config))
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
            pixel_values: ``[B, ...]`` inputs with ``input_size`` elements per example.
            labels: optional ``[B]`` class ids or ``[B, num_labels]`` float targets.
            output_hidden_states: also return the input and every hidden activation.
            return_dict: return a tuple when ``False``.

        Returns:
            ``ImageClassifierOutput`` with ``loss`` (when labels are given) and ``logits`` ``[B, num_labels]``.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        x = pixel_values.reshape(pixel_values.shape[0], -1)
        if x.shape[1] != self.config.input_size:
            raise ValueError(
                f"pixel_values has {x.shape[1]} features per example "
                f"(shape {tuple(pixel_values.shape)}), but config.input_size is {self.config.input_size}"
            )
        x = x.to(self.classifier.weight.dtype)
        hidden: list[torch.Tensor] = [x]
        for layer in self.layers:
            x = self.act(layer(x))
            hidden.append(x)
        logits = self.classifier(x)
        loss = classification_loss(logits, labels, self.config.loss_type) if labels is not None else None
        hidden_states = tuple(hidden) if output_hidden_states else None
        if not return_dict:
            out = (logits, hidden_states) if output_hidden_states else (logits,)
            return (loss, *out) if loss is not None else out
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=hidden_states)
