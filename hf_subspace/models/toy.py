"""The paper's 2-D toy: an ill-conditioned quadratic valley whose two per-sample losses differ by ±xy cross terms.

Parameters ``θ = (x, y)``; sample ``s ∈ {+1, −1}`` has the loss

.. math::

    \\ell_s(x, y) = \\tfrac12 (a x^2 + b y^2) + s\\, c\\, x y ,

so the full loss is the valley :math:`L = \\tfrac12 (a x^2 + b y^2)` with a sharp direction ``x`` (curvature ``a``) and a
flat direction ``y`` (curvature ``b ≪ a``), and the Hessian of ``L`` is ``diag(a, b)`` everywhere: its top eigenvector
(k = 1) is ``e_x``. The per-sample gradients ``(a x + s c y, b y + s c x)`` carry the noise ``±c y`` along the sharp
direction, so minibatch SGD keeps bouncing across the valley: ``|x| = c|y|/a`` for learning rate ``1/a``, the
full-batch gradient ``(a x, b y)`` is dominated by its sharp part (χ_1 ≈ c / √(c² + b²) ≈ 1), yet that part of the
loss is tiny and all progress is along ``y``. Full-batch GD has no such noise and settles on the valley floor
(χ_1 → 0); Dom-SGD can only move across the valley (the loss plateaus); Bulk-SGD moves along it and converges like
SGD.

The defaults ``a = 1000``, ``b = 1``, ``c = 3`` with learning rate ``1/a`` give χ_1 = 3/√10 ≈ 0.95 for SGD; the
across-valley part of the loss is then ``c²/(a·b) ≈ 1 %`` of the total, so Bulk-SGD (which keeps the across-valley
offset it had at the switch) tracks SGD until the loss has dropped about a hundredfold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

__all__ = [
    "ToyQuadraticConfig",
    "ToyQuadraticModel",
    "ToyQuadraticOutput",
    "toy_quadratic_dataset",
    "toy_quadratic_loss",
]


class ToyQuadraticConfig(PretrainedConfig):
    """Configuration of :class:`ToyQuadraticModel`.

    Args:
        sharpness: curvature ``a`` of the sharp direction ``x``.
        flatness: curvature ``b`` of the flat direction ``y`` (``b < a``).
        noise: coefficient ``c`` of the per-sample cross terms ``±c·x·y``.
        init_point: starting point ``(x0, y0)``.
    """

    model_type = "hf_subspace_toy_quadratic"

    sharpness: float = 1000.0
    flatness: float = 1.0
    noise: float = 3.0
    init_point: list[float] | tuple[float, float] = (0.02, 1.0)

    def __post_init__(self, **kwargs):
        self.init_point = [float(v) for v in self.init_point]
        if len(self.init_point) != 2:
            raise ValueError(f"init_point must have two coordinates (x0, y0), got {self.init_point}")
        if not 0 < self.flatness < self.sharpness:
            raise ValueError(
                f"need 0 < flatness < sharpness for a valley, got flatness={self.flatness}, sharpness={self.sharpness}"
            )
        super().__post_init__(**kwargs)


@dataclass
class ToyQuadraticOutput(ModelOutput):
    """Output of :class:`ToyQuadraticModel`: the batch-mean ``loss`` and the per-sample losses as ``logits``."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class ToyQuadraticModel(PreTrainedModel):
    """The two-parameter valley as a ``PreTrainedModel`` (``save_pretrained`` / ``from_pretrained`` / model cards).

    Args:
        config: a :class:`ToyQuadraticConfig`.
    """

    config_class = ToyQuadraticConfig
    config: ToyQuadraticConfig
    base_model_prefix = "toy"
    main_input_name = "sign"
    accepts_loss_kwargs = False

    def __init__(self, config: ToyQuadraticConfig) -> None:
        super().__init__(config)
        self.theta = nn.Parameter(torch.tensor(config.init_point, dtype=torch.float32))
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if module is self:
            init.copy_(self.theta, torch.tensor(self.config.init_point, dtype=self.theta.dtype))

    def forward(
        self, sign: torch.Tensor, labels: torch.Tensor | None = None, return_dict: bool | None = None
    ) -> ToyQuadraticOutput | tuple:
        """Per-sample losses of a batch of samples.

        Args:
            sign: ``[B]`` the sample signs ``s = ±1`` (which of the two losses).
            labels: accepted for the Trainer's conventions (the label of a sample is its sign); not used.
            return_dict: return a tuple when ``False``.

        Returns:
            ``loss`` (batch mean) and ``logits`` ``[B, 1]`` (the per-sample losses).
        """
        cfg = self.config
        x, y = self.theta[0], self.theta[1]
        s = sign.reshape(-1).to(self.theta.dtype)
        per_sample = 0.5 * (cfg.sharpness * x * x + cfg.flatness * y * y) + s * (cfg.noise * x * y)
        loss = per_sample.mean()
        logits = per_sample.unsqueeze(-1)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if not return_dict:
            return (loss, logits)
        return ToyQuadraticOutput(loss=loss, logits=logits)


def toy_quadratic_loss(config: ToyQuadraticConfig, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The full loss ``½(a x² + b y²)`` on arrays (for contour plots)."""
    return 0.5 * (config.sharpness * np.asarray(x) ** 2 + config.flatness * np.asarray(y) ** 2)


def toy_quadratic_dataset(num_pairs: int = 50) -> torch.utils.data.Dataset:
    """The two samples, repeated ``num_pairs`` times (so an epoch has ``2·num_pairs`` steps at batch size 1).

    Returns:
        A map-style dataset of ``{"sign": ±1.0, "labels": ±1.0}`` items, signs alternating.
    """
    if num_pairs < 1:
        raise ValueError(f"num_pairs must be at least 1, got {num_pairs}")
    from ..tensor_dataset import TensorDataset

    signs = torch.tensor([1.0, -1.0]).repeat(num_pairs)
    return TensorDataset({"sign": signs, "labels": signs.clone()})


AutoConfig.register(ToyQuadraticConfig.model_type, ToyQuadraticConfig, exist_ok=True)
AutoModel.register(ToyQuadraticConfig, ToyQuadraticModel, exist_ok=True)
