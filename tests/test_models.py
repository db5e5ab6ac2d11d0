"""Tests for the paper's models: shapes, losses, Auto round trips, double backward, attention masking."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
)
from transformers.modeling_outputs import ImageClassifierOutput, SequenceClassifierOutput

from hf_subspace.models import (
    CNNConfig,
    CNNForImageClassification,
    MLPConfig,
    MLPForImageClassification,
    SST2TransformerConfig,
    SST2TransformerForSequenceClassification,
    classification_loss,
    sinusoidal_positions,
)

BATCH = 4


def _small(kind: str, loss_type: str = "mse"):
    """A small model of each kind and a matching batch of inputs (without labels)."""
    torch.manual_seed(0)
    if kind == "mlp":
        model = MLPForImageClassification(
            MLPConfig(input_size=12, hidden_sizes=(7, 5), num_labels=3, loss_type=loss_type)
        )
        inputs = {"pixel_values": torch.randn(BATCH, 1, 3, 4)}
    elif kind == "cnn":
        config = CNNConfig(num_channels=2, image_size=8, conv_channels=(3, 4), num_labels=3, loss_type=loss_type)
        model = CNNForImageClassification(config)
        inputs = {"pixel_values": torch.randn(BATCH, 2, 8, 8)}
    else:
        config = SST2TransformerConfig(
            vocab_size=30,
            max_position_embeddings=10,
            hidden_size=8,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=16,
            num_labels=3,
            loss_type=loss_type,
        )
        model = SST2TransformerForSequenceClassification(config)
        ids = torch.randint(1, 30, (BATCH, 10))
        mask = torch.ones_like(ids)
        mask[0, 6:] = 0
        mask[2, 3:] = 0
        ids[mask == 0] = 0
        inputs = {"input_ids": ids, "attention_mask": mask}
    return model.eval(), inputs


KINDS = ["mlp", "cnn", "transformer"]
LABELS = torch.tensor([0, 2, 1, 2])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("loss_type", ["mse", "cross_entropy"])
def test_forward_shapes_and_loss(kind: str, loss_type: str) -> None:
    model, inputs = _small(kind, loss_type)
    out = model(**inputs, labels=LABELS)
    expected_cls = SequenceClassifierOutput if kind == "transformer" else ImageClassifierOutput
    assert isinstance(out, expected_cls)
    assert out.logits.shape == (BATCH, 3)
    assert out.loss.shape == ()
    assert model(**inputs).loss is None
    if loss_type == "mse":
        manual = 0.5 * ((out.logits - F.one_hot(LABELS, 3).float()) ** 2).sum(dim=1).mean()
    else:
        manual = F.cross_entropy(out.logits, LABELS)
    torch.testing.assert_close(out.loss, manual)
    as_tuple = model(**inputs, labels=LABELS, return_dict=False)
    torch.testing.assert_close(as_tuple[0], out.loss)
    torch.testing.assert_close(as_tuple[1], out.logits)


def test_mse_loss_formula_and_float_targets() -> None:
    logits = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]])
    labels = torch.tensor([2, 1])
    # ½ Σ_c (logit − onehot)², averaged over the batch
    by_hand = 0.5 * ((1 + 4 + 0.25) + (0 + 4 + 1)) / 2
    assert classification_loss(logits, labels, "mse").item() == pytest.approx(by_hand)
    one_hot = F.one_hot(labels, 3).float()
    assert classification_loss(logits, one_hot, "mse").item() == pytest.approx(by_hand)
    soft = torch.tensor([[0.2, 0.3, 0.5], [0.0, 1.0, 0.0]])
    assert classification_loss(logits, soft, "mse").item() == pytest.approx(
        (0.5 * ((logits - soft) ** 2).sum(1)).mean().item()
    )
    assert classification_loss(logits, one_hot, "cross_entropy").item() == pytest.approx(
        F.cross_entropy(logits, labels).item()
    )
    with pytest.raises(ValueError, match="loss_type"):
        classification_loss(logits, labels, "hinge")
    with pytest.raises(ValueError, match="labels"):
        classification_loss(logits, torch.tensor([0, 1, 2]), "mse")


@pytest.mark.parametrize("kind", KINDS)
def test_float_label_targets_in_forward(kind: str) -> None:
    model, inputs = _small(kind)
    loss_ids = model(**inputs, labels=LABELS).loss
    loss_onehot = model(**inputs, labels=F.one_hot(LABELS, 3).float()).loss
    torch.testing.assert_close(loss_ids, loss_onehot)


def test_paper_default_architectures() -> None:
    mlp = MLPForImageClassification(MLPConfig())
    assert [tuple(p.shape) for p in mlp.parameters()] == [(200, 784), (200,), (200, 200), (200,), (10, 200), (10,)]
    assert mlp.config.activation == "tanh" and mlp.config.loss_type == "mse" and mlp.config.num_labels == 10
    cnn = CNNForImageClassification(CNNConfig())
    conv_shapes = [tuple(c.weight.shape) for c in cnn.convs]
    assert conv_shapes == [(32, 3, 3, 3), (32, 32, 3, 3)]
    assert cnn.classifier.in_features == 32 * 8 * 8
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in cnn.modules())
    assert cnn(torch.randn(2, 3, 32, 32)).logits.shape == (2, 10)
    cfg = SST2TransformerConfig(vocab_size=100)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (64, 2, 8, 2048)
    assert cfg.num_labels == 2 and cfg.pad_token_id == 0 and cfg.max_position_embeddings == 64
    text = SST2TransformerForSequenceClassification(cfg)
    assert not any(isinstance(m, torch.nn.Dropout) for m in text.modules())
    assert torch.count_nonzero(text.embeddings.weight[0]) == 0  # padding row


def test_default_init_is_pytorch_default_and_seeded() -> None:
    torch.manual_seed(1)
    a = MLPForImageClassification(MLPConfig())
    torch.manual_seed(1)
    b = MLPForImageClassification(MLPConfig())
    for pa_, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa_, pb)
    bound = 1 / math.sqrt(784)
    first = a.layers[0]
    assert first.weight.abs().max() <= bound and first.weight.abs().max() > 0.9 * bound
    assert first.bias.abs().max() <= bound and first.bias.abs().max() > 0
    c = MLPForImageClassification(MLPConfig(initializer_range=0.01))
    assert c.layers[0].weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert torch.count_nonzero(c.layers[0].bias) == 0


@pytest.mark.parametrize(
    ("kind", "auto_cls"),
    [("mlp", AutoModelForImageClassification), ("cnn", AutoModelForImageClassification),
     ("transformer", AutoModelForSequenceClassification)],
)  # fmt: skip
def test_save_and_auto_from_pretrained_round_trip(kind: str, auto_cls, tmp_path) -> None:
    model, inputs = _small(kind, "cross_entropy")
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert type(config) is type(model.config)
    assert config.loss_type == "cross_entropy" and config.num_labels == 3
    loaded = auto_cls.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    for (name, p), (name2, q) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert name == name2
        torch.testing.assert_close(p, q)
    torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)


def _params_and_loss(kind: str):
    model, inputs = _small(kind)
    params = [p for p in model.parameters() if p.requires_grad]
    return model, inputs, params


@pytest.mark.parametrize("kind", KINDS)
def test_double_backward_hessian_vector_products(kind: str) -> None:
    model, inputs, params = _params_and_loss(kind)
    loss = model(**inputs, labels=LABELS).loss
    grads = torch.autograd.grad(loss, params, create_graph=True)
    gen = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=gen) for p in params]
    w = [torch.randn(p.shape, generator=gen) for p in params]
    gv = sum((g * x).sum() for g, x in zip(grads, v))
    hv = torch.autograd.grad(gv, params, retain_graph=True)
    gw = sum((g * x).sum() for g, x in zip(grads, w))
    hw = torch.autograd.grad(gw, params)
    w_hv = sum((a * b).sum() for a, b in zip(w, hv))
    v_hw = sum((a * b).sum() for a, b in zip(v, hw))
    assert torch.isfinite(w_hv) and w_hv.abs() > 0
    assert w_hv.item() == pytest.approx(v_hw.item(), rel=1e-3, abs=1e-5)  # the Hessian is symmetric


@pytest.mark.parametrize("kind", KINDS)
def test_torch_func_forward_over_reverse_matches_double_backward(kind: str) -> None:
    model, inputs, _ = _params_and_loss(kind)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    theta = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    def loss_fn(params: dict) -> torch.Tensor:
        return torch.func.functional_call(model, params, args=(), kwargs={**inputs, "labels": LABELS}).loss

    gen = torch.Generator().manual_seed(3)
    tangent = {n: torch.randn(theta[n].shape, generator=gen) for n in names}
    _, hvp_func = torch.func.jvp(torch.func.grad(loss_fn), (theta,), (tangent,))
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(model(**inputs, labels=LABELS).loss, params, create_graph=True)
    hvp = torch.autograd.grad(sum((g * tangent[n]).sum() for g, n in zip(grads, names)), params)
    for n, h in zip(names, hvp):
        torch.testing.assert_close(hvp_func[n], h, rtol=1e-4, atol=1e-5)


def test_attention_mask_padding_does_not_change_output() -> None:
    model, inputs = _small("transformer")
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    base = model(input_ids=ids, attention_mask=mask).logits
    # other token ids at padded positions: same logits
    noisy = ids.clone()
    noisy[mask == 0] = torch.randint(1, 30, (int((mask == 0).sum()),))
    torch.testing.assert_close(model(input_ids=noisy, attention_mask=mask).logits, base)
    # the same sequence without its padding: same logits
    short = model(input_ids=ids[:1, :6], attention_mask=mask[:1, :6]).logits
    torch.testing.assert_close(short, base[:1], rtol=1e-5, atol=1e-6)
    # the mask matters: attending to the padding changes the output
    assert not torch.allclose(model(input_ids=noisy).logits[0], base[0])
    # no mask means every token is real
    torch.testing.assert_close(
        model(input_ids=ids).logits, model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    )
    attn = model(**inputs, output_attentions=True).attentions
    assert len(attn) == 2 and attn[0].shape == (BATCH, 2, 10, 10)
    assert torch.all(attn[0][0, :, :, 6:] == 0)


def test_sinusoidal_positions() -> None:
    pe = sinusoidal_positions(5, 6)
    assert pe.shape == (5, 6)
    torch.testing.assert_close(pe[0], torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0]))
    assert pe[3, 2].item() == pytest.approx(math.sin(3 / 10000 ** (2 / 6)), rel=1e-6)
    assert sinusoidal_positions(4, 5).shape == (4, 5)


def test_invalid_configs_and_inputs() -> None:
    with pytest.raises(ValueError, match="loss_type"):
        MLPConfig(loss_type="l1")
    with pytest.raises(ValueError, match="divisible"):
        SST2TransformerConfig(hidden_size=10, num_attention_heads=3)
    model, _ = _small("transformer")
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(input_ids=torch.ones(1, 11, dtype=torch.long))
    mlp, _ = _small("mlp")
    with pytest.raises(ValueError, match="input_size"):
        mlp(pixel_values=torch.randn(2, 5))
    cnn, _ = _small("cnn")
    with pytest.raises(ValueError, match="pixel_values"):
        cnn(pixel_values=torch.randn(2, 3, 8, 8))


@pytest.mark.parametrize("kind", KINDS)
def test_trainer_compatibility_flags(kind: str) -> None:
    model, _ = _small(kind)
    params = inspect.signature(model.forward).parameters
    assert "labels" in params
    assert not any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())
    assert model.accepts_loss_kwargs is False
