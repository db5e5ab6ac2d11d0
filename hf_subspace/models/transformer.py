"""Small post-LayerNorm transformer encoder for SST-2 (the paper's text model).

Attention is written out as ``softmax(QKᵀ/√d)V`` with plain tensor operations: fused scaled-dot-product kernels do
not support the double backward that Hessian-vector products need.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import SequenceClassifierOutput

from ._loss import check_loss_type, classification_loss, init_module_weights, num_labels_of

__all__ = [
    "SST2TransformerConfig",
    "SST2TransformerForSequenceClassification",
    "SST2TransformerPreTrainedModel",
    "sinusoidal_positions",
]


class SST2TransformerConfig(PretrainedConfig):
    """Configuration of :class:`SST2TransformerForSequenceClassification`.

    Args:
        vocab_size: number of token ids.
        max_position_embeddings: longest sequence the model accepts.
        hidden_size: model width (must be divisible by ``num_attention_heads``).
        num_hidden_layers: number of encoder layers.
        num_attention_heads: attention heads per layer.
        intermediate_size: width of the feed-forward block.
        hidden_act: feed-forward activation, a key of ``transformers.activations.ACT2FN``.
        layer_norm_eps: LayerNorm epsilon.
        num_labels: number of classes (passed through to ``PretrainedConfig``; default 2).
        pad_token_id: id of the padding token (its embedding row is zero and receives no gradient).
        loss_type: ``"mse"`` (the paper's) or ``"cross_entropy"``.
        initializer_range: ``None`` for PyTorch's default initialisation, or the standard deviation of normal weights.
    """

    model_type = "hf_subspace_sst2_transformer"

    vocab_size: int = 8000
    max_position_embeddings: int = 64
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 8
    intermediate_size: int = 2048
    hidden_act: str = "relu"
    layer_norm_eps: float = 1e-5
    pad_token_id: int | None = 0
    loss_type: str = "mse"
    initializer_range: float | None = None

    def __post_init__(self, **kwargs):
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads})"
            )
        check_loss_type(self.loss_type)
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"unknown hidden_act {self.hidden_act!r}; choose one of {sorted(ACT2FN)}")
        super().__post_init__(**kwargs)


def sinusoidal_positions(
    length: int, dim: int, *, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Fixed sinusoidal position encodings (Vaswani et al. 2017).

    Args:
        length: number of positions.
        dim: encoding width.
        device: device of the result.
        dtype: dtype of the result.

    Returns:
        ``[length, dim]`` tensor; even columns hold ``sin(p·ω_i)``, odd columns ``cos(p·ω_i)``, ``ω_i = 10000^(−2i/dim)``.
    """
    position = torch.arange(length, dtype=torch.float64, device=device).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64, device=device) * (-math.log(10000.0) / dim))
    angles = position * freq
    encoding = torch.zeros(length, dim, dtype=torch.float64, device=device)
    encoding[:, 0::2] = torch.sin(angles)
    encoding[:, 1::2] = torch.cos(angles)[:, : dim // 2]
    return encoding.to(dtype)


class _SelfAttention(nn.Module):
    """Multi-head self-attention with explicit softmax(QKᵀ/√d)V; padded keys get zero weight."""

    def __init__(self, config: SST2TransformerConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.output = nn.Linear(config.hidden_size, config.hidden_size)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        scores = scores.masked_fill(~key_mask[:, None, None, :], torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1)
        context = torch.matmul(probs, v).transpose(1, 2).reshape(x.shape)
        return self.output(context), probs


class _EncoderLayer(nn.Module):
    """Post-LN layer: ``h = LN(x + Attn(x))``, ``out = LN(h + FFN(h))``; no dropout."""

    def __init__(self, config: SST2TransformerConfig) -> None:
        super().__init__()
        self.attention = _SelfAttention(config)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.intermediate = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.ffn_output = nn.Linear(config.intermediate_size, config.hidden_size)
        self.output_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attended, probs = self.attention(x, key_mask)
        h = self.attention_norm(x + attended)
        out = self.output_norm(h + self.ffn_output(self.act(self.intermediate(h))))
        return out, probs


class SST2TransformerPreTrainedModel(PreTrainedModel):
    """Base class: config class, weight initialisation and input name for the SST-2 transformer."""

    config_class = SST2TransformerConfig
    config: SST2TransformerConfig
    base_model_prefix = "transformer"
    main_input_name = "input_ids"
    accepts_loss_kwargs = False

    def _init_weights(self, module: nn.Module) -> None:
        init_module_weights(module, self.config.initializer_range)


class SST2TransformerForSequenceClassification(SST2TransformerPreTrainedModel):
    """Token embedding + sinusoidal positions → post-LN encoder → mean pooling over real tokens → linear head.

    Args:
        config: an :class:`SST2TransformerConfig`.
    """

    def __init__(self, config: SST2TransformerConfig) -> None:
        super().__init__(config)
        pad = config.pad_token_id
        padding_idx = pad if pad is not None and 0 <= pad < config.vocab_size else None
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=padding_idx)
        self.layers = nn.ModuleList(_EncoderLayer(config) for _ in range(config.num_hidden_layers))
        self.classifier = nn.Linear(config.hidden_size, num_labels_of(config))
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding."""
        return self.embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        """Replace the token embedding.

        Raises:
            TypeError: for anything but an ``nn.Embedding``.
        """
        if not isinstance(value, nn.Embedding):
            raise TypeError(f"the token embedding must be an nn.Embedding, got {type(value).__name__}")
        self.embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> SequenceClassifierOutput | tuple:
        """Classify a batch of token sequences.

        Args:
            input_ids: ``[B, L]`` token ids, ``L <= max_position_embeddings``.
            attention_mask: ``[B, L]``, nonzero for real tokens; ``None`` treats every token as real. Padded positions
                are ignored as attention keys and in the mean pooling, so their ids do not change the logits.
            labels: optional ``[B]`` class ids or ``[B, num_labels]`` float targets.
            output_attentions: also return every layer's attention probabilities ``[B, heads, L, L]``.
            output_hidden_states: also return the embedding output and every layer's output.
            return_dict: return a tuple when ``False``.

        Returns:
            ``SequenceClassifierOutput`` with ``loss`` (when labels are given) and ``logits`` ``[B, num_labels]``.
        """
        cfg = self.config
        output_attentions = output_attentions if output_attentions is not None else cfg.output_attentions
        output_hidden_states = output_hidden_states if output_hidden_states is not None else cfg.output_hidden_states
        return_dict = return_dict if return_dict is not None else cfg.return_dict
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape [batch, length], got {tuple(input_ids.shape)}")
        length = input_ids.shape[1]
        if length > cfg.max_position_embeddings:
            raise ValueError(f"sequence length {length} exceeds max_position_embeddings={cfg.max_position_embeddings}")
        if attention_mask is None:
            key_mask = torch.ones_like(input_ids, dtype=torch.bool)
        else:
            if attention_mask.shape != input_ids.shape:
                raise ValueError(
                    f"attention_mask shape {tuple(attention_mask.shape)} differs from input_ids {tuple(input_ids.shape)}"
                )
            key_mask = attention_mask != 0
        x = self.embeddings(input_ids)
        x = x + sinusoidal_positions(length, cfg.hidden_size, device=x.device, dtype=x.dtype)
        hidden: list[torch.Tensor] = [x]
        attentions: list[torch.Tensor] = []
        for layer in self.layers:
            x, probs = layer(x, key_mask)
            hidden.append(x)
            attentions.append(probs)
        weights = key_mask.to(x.dtype).unsqueeze(-1)
        pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        logits = self.classifier(pooled)
        loss = classification_loss(logits, labels, cfg.loss_type) if labels is not None else None
        hidden_states = tuple(hidden) if output_hidden_states else None
        attn = tuple(attentions) if output_attentions else None
        if not return_dict:
            out = tuple(t for t in (logits, hidden_states, attn) if t is not None)
            return (loss, *out) if loss is not None else out
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=hidden_states, attentions=attn)
