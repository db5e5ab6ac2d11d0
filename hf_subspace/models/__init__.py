"""The paper's models as ``transformers`` models, registered with the Auto classes.

Importing this package registers the three config types with ``AutoConfig`` and the models with
``AutoModelForImageClassification`` (MLP, CNN) or ``AutoModelForSequenceClassification`` (transformer), so
``AutoModelFor....from_pretrained(saved_dir)`` round trips once ``hf_subspace.models`` has been imported.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForImageClassification, AutoModelForSequenceClassification

from ._loss import LOSS_TYPES, classification_loss
from .cnn import CNNConfig, CNNForImageClassification
from .mlp import MLPConfig, MLPForImageClassification
from .transformer import SST2TransformerConfig, SST2TransformerForSequenceClassification, sinusoidal_positions

__all__ = [
    "LOSS_TYPES",
    "CNNConfig",
    "CNNForImageClassification",
    "MLPConfig",
    "MLPForImageClassification",
    "SST2TransformerConfig",
    "SST2TransformerForSequenceClassification",
    "classification_loss",
    "register_auto_classes",
    "sinusoidal_positions",
]


def register_auto_classes() -> None:
    """Register the configs and models with the ``transformers`` Auto classes (idempotent)."""
    for config_cls in (MLPConfig, CNNConfig, SST2TransformerConfig):
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
    AutoModelForImageClassification.register(MLPConfig, MLPForImageClassification, exist_ok=True)
    AutoModelForImageClassification.register(CNNConfig, CNNForImageClassification, exist_ok=True)
    AutoModelForSequenceClassification.register(
        SST2TransformerConfig, SST2TransformerForSequenceClassification, exist_ok=True
    )


register_auto_classes()
