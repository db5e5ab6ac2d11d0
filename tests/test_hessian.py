"""HessianOperator against dense Hessians from torch.func.hessian."""

from __future__ import annotations

import pytest
import torch
from _reference import (
    LinearRegression,
    SmallCNN,
    TanhMLP,
    classification_batches,
    dense_hessian,
    regression_batches,
)
from torch import nn

from hf_subspace import HessianOperator


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((torch.linalg.norm(a - b) / torch.linalg.norm(b)).item())


def _check_against_dense(model: nn.Module, batches: list[dict], m: int = 4) -> torch.Tensor:
    op = HessianOperator(model, batches)
    dense = dense_hessian(model, batches)
    assert op.shape == tuple(dense.shape)
    g = torch.Generator().manual_seed(1)
    block = torch.randn(op.dim, m, generator=g, dtype=torch.float64)
    assert _rel_err(op.matmat(block), dense @ block) <= 1e-5
    assert _rel_err(op @ block[:, 0], dense @ block[:, 0]) <= 1e-5
    assert _rel_err(op.matvec(block[:, 1]), dense @ block[:, 1]) <= 1e-5
    assert op.num_matvecs == m + 2
    return dense


def test_linear_mse_unequal_batches() -> None:
    torch.manual_seed(0)
    model = LinearRegression().double()
    batches = regression_batches([3, 5, 2])
    dense = _check_against_dense(model, batches)
    # Closed form for the quadratic: H = 2/N Σ_i (I_out ⊗ [x_i; 1][x_i; 1]ᵀ) in (weight, bias) order.
    x = torch.cat([b["x"] for b in batches])
    n_out, n_in = model.linear.weight.shape
    xx = 2 * x.T @ x / len(x)
    assert torch.allclose(dense[: n_out * n_in, : n_out * n_in], torch.kron(torch.eye(n_out, dtype=x.dtype), xx))


def test_mlp_tanh_unused_and_frozen_parameters() -> None:
    torch.manual_seed(0)
    model = TanhMLP().double()
    batches = classification_batches([4, 7, 1], (5,))
    op = HessianOperator(model, batches)
    assert "frozen" not in op.param_names and "unused" in op.param_names
    dense = _check_against_dense(model, batches)
    named = dict(model.named_parameters())
    start = sum(named[n].numel() for n in op.param_names[: op.param_names.index("unused")])
    assert torch.count_nonzero(dense[start : start + 4]) == 0  # unused parameter: zero curvature
    assert torch.count_nonzero(dense) > dense.shape[0]


def test_small_cnn() -> None:
    torch.manual_seed(0)
    model = SmallCNN().double()
    _check_against_dense(model, classification_batches([3, 2], (2, 6, 6)))


def _tiny_bert(attn: str) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=13,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=8,
        max_position_embeddings=8,
        num_labels=2,
        attn_implementation=attn,
    )
    torch.manual_seed(0)
    return BertForSequenceClassification(config).double()


def test_tiny_transformer_with_default_sdpa_attention() -> None:
    model = _tiny_bert("sdpa")
    reference = _tiny_bert("eager")  # same weights (same seed); the reference cannot differentiate fused SDPA twice
    g = torch.Generator().manual_seed(0)
    batches = []
    for n in (2, 3):
        mask = torch.ones(n, 6, dtype=torch.long)
        mask[0, 4:] = 0  # padding in one sequence
        batches.append(
            {
                "input_ids": torch.randint(0, 13, (n, 6), generator=g),
                "attention_mask": mask,
                "labels": torch.randint(0, 2, (n,), generator=g),
            }
        )
    model.train()  # dropout on: the operator must evaluate in eval mode and restore train mode
    op = HessianOperator(model, batches)
    dense = dense_hessian(reference, batches, method="autograd")
    block = torch.randn(op.dim, 3, generator=g, dtype=torch.float64)
    assert _rel_err(op.matmat(block), dense @ block) <= 1e-5
    assert model.training and all(m.training for m in model.modules())


def test_restores_grad_and_mode_and_loss_gradient() -> None:
    torch.manual_seed(0)
    model = TanhMLP().double()
    batches = classification_batches([4, 6], (5,))
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0) if p.requires_grad else None
    model.fc1.eval()
    before = {n: m.training for n, m in model.named_modules()}
    op = HessianOperator(model, batches, eval_mode=False)
    op.matvec(torch.ones(op.dim, dtype=torch.float64))
    loss, grad = op.loss_and_gradient()
    assert {n: m.training for n, m in model.named_modules()} == before
    assert all(p.grad is None or torch.all(p.grad == 3.0) for p in model.parameters())
    # full-batch loss and gradient equal the sample-weighted mean over the batches
    params = [p for p in model.parameters() if p.requires_grad]
    full = {"x": torch.cat([b["x"] for b in batches]), "labels": torch.cat([b["labels"] for b in batches])}
    ref_loss = model(**full)["loss"]
    ref_grad = torch.cat(
        [g.reshape(-1) for g in torch.autograd.grad(ref_loss, params, allow_unused=True) if g is not None]
        + [torch.zeros(0, dtype=torch.float64)]
    )
    assert loss == pytest.approx(ref_loss.item(), rel=1e-12)
    # parameter order: unused (own parameter, registered first), fc1, fc2; the unused one has zero gradient
    expected = torch.cat([torch.zeros(model.unused.numel(), dtype=torch.float64), ref_grad])
    assert torch.allclose(grad, expected, rtol=1e-10, atol=1e-12)
    assert op.loss() == pytest.approx(loss, rel=1e-12)


def test_parameter_filter_and_explicit_params() -> None:
    torch.manual_seed(0)
    model = TanhMLP().double()
    batches = classification_batches([5], (5,))
    dense = dense_hessian(model, batches)
    op = HessianOperator(model, batches, parameter_filter=r"^fc2\.")
    assert op.param_names == ["fc2.weight", "fc2.bias"]
    offset = dense.shape[0] - op.dim
    v = torch.randn(op.dim, dtype=torch.float64)
    assert _rel_err(op @ v, dense[offset:, offset:] @ v) <= 1e-10
    op2 = HessianOperator(model, batches, params=[model.fc2.weight, model.fc2.bias])
    assert torch.allclose(op2 @ v, op @ v)


def test_tuple_batches_with_loss_fn_and_float32() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(n, 4, generator=g), torch.randn(n, 2, generator=g)) for n in (3, 6)]

    def loss_fn(m: nn.Module, batch: tuple) -> torch.Tensor:
        x, y = batch
        return ((m(x) - y) ** 2).mean()

    op = HessianOperator(model, batches, loss_fn)
    assert op.dtype == torch.float32 and op.num_samples == 9
    x = torch.cat([b[0] for b in batches])
    xa = torch.cat([x, torch.ones(len(x), 1)], 1)
    h_w = 2 * xa.T @ xa / (len(x) * 2)  # mean over the 2 outputs too
    v = torch.randn(op.dim)
    hv = op @ v
    w_part = v[:8].reshape(2, 4)
    b_part = v[8:]
    full = torch.cat([w_part, b_part[:, None]], 1) @ h_w
    expected = torch.cat([full[:, :4].reshape(-1), full[:, 4]])
    assert _rel_err(hv, expected) <= 1e-5


def test_bad_input_errors() -> None:
    model = TanhMLP().double()
    with pytest.raises(ValueError, match="empty"):
        HessianOperator(model, [])
    frozen = nn.Linear(3, 2)
    frozen.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        HessianOperator(frozen, [{"x": torch.zeros(1, 3), "labels": torch.zeros(1)}])
    with pytest.raises(ValueError, match="labels"):
        HessianOperator(model, [{"x": torch.zeros(2, 5)}])
    with pytest.raises(ValueError, match="parameter filter"):
        HessianOperator(model, classification_batches([2], (5,)), parameter_filter="nothing")
    with pytest.raises(ValueError, match="float32 or float64"):
        HessianOperator(TanhMLP().half(), classification_batches([2], (5,), dtype=torch.float16))
    op = HessianOperator(model, classification_batches([2], (5,)))
    with pytest.raises(ValueError, match="shape"):
        op.matmat(torch.zeros(3, 2, dtype=torch.float64))
    with torch.no_grad():
        model.fc1.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="not finite"):
        op.matvec(torch.ones(op.dim, dtype=torch.float64))


def test_sharded_setups_are_refused() -> None:
    class FullyShardedDataParallel(nn.Module):  # stands in for torch's FSDP wrapper (same class name)
        def __init__(self) -> None:
            super().__init__()
            self.module = TanhMLP()

    with pytest.raises(NotImplementedError, match="FSDP"):
        HessianOperator(FullyShardedDataParallel(), classification_batches([2], (5,), dtype=torch.float32))
    model = TanhMLP()
    model.fc1.weight.ds_id = 3  # how DeepSpeed ZeRO-3 marks partitioned parameters
    with pytest.raises(NotImplementedError, match="ZeRO"):
        HessianOperator(model, classification_batches([2], (5,), dtype=torch.float32))


def test_eigenpairs_of_model_hessian_and_warm_start_after_parameter_change() -> None:
    """Eigenpairs of a real model's Hessian match eigh of the dense Hessian; a warm start after a small SGD step
    needs at most half the Hessian-vector products of a cold start of the same block solver."""
    from _reference import subspace_distance

    from hf_subspace import hessian_eigenpairs, top_eigenpairs

    torch.manual_seed(0)
    model = TanhMLP(n_in=10, hidden=40, n_out=5).double()  # d = 4 + 440 + 205 = 649
    batches = classification_batches([30, 20, 25], (10,), n_out=5)
    dense = dense_hessian(model, batches)
    ref_values, ref_vectors = torch.linalg.eigh(dense)
    ref_values, ref_vectors = ref_values.flip(0)[:5], ref_vectors.flip(1)[:, :5]
    for method in ("lanczos", "lobpcg", "eigsh"):
        res = hessian_eigenpairs(model, batches, 5, method=method, tol=1e-8)
        assert torch.allclose(res.eigenvalues, ref_values, rtol=1e-4), method
        assert subspace_distance(res.eigenvectors, ref_vectors) <= 1e-3, method
    op = HessianOperator(model, batches)
    # The tolerance of training-time refreshes (float32 default): a warm start pays off when the change of the
    # Hessian is of the order of the tolerance; at 1e-6 every start needs many iterations on this clustered spectrum.
    tol = 1e-3
    cold = top_eigenpairs(op, 5, method="lobpcg", tol=tol)
    _loss, grad = op.loss_and_gradient()
    with torch.no_grad():  # one small gradient step changes the Hessian a little
        offset = 0
        for p in op.params:
            p.sub_(0.05 * grad[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
    warm = top_eigenpairs(op, 5, method="lobpcg", init=cold.eigenvectors, tol=tol)
    again = top_eigenpairs(op, 5, method="lobpcg", tol=tol)
    assert warm.converged and again.converged
    assert torch.allclose(warm.eigenvalues, again.eigenvalues, rtol=1e-3)
    assert warm.num_matvecs <= 0.5 * again.num_matvecs, (warm.num_matvecs, again.num_matvecs)


def test_gradient_from_a_product_pass_is_reused_until_parameters_change() -> None:
    torch.manual_seed(0)
    model = TanhMLP().double()
    batches = classification_batches([4, 6], (5,))
    op = HessianOperator(model, batches)
    fresh = HessianOperator(model, batches).loss_and_gradient()
    op.matvec(torch.ones(op.dim, dtype=torch.float64))
    passes = op.num_passes
    loss, grad = op.loss_and_gradient()
    assert op.num_passes == passes  # reused from the product pass
    assert loss == pytest.approx(fresh[0], rel=1e-12) and torch.allclose(grad, fresh[1], rtol=1e-10)
    with torch.no_grad():
        model.fc1.weight.mul_(1.5)  # an in-place change invalidates it
    loss2, _ = op.loss_and_gradient()
    assert op.num_passes == passes + 1 and loss2 != pytest.approx(loss)


def test_batched_block_product_is_refused_with_a_clear_error_when_vmap_fails(monkeypatch):
    # Some kernels have no vmap batching rule (seen on a CNN on CPU: "NYI: querying is_contiguous inside of vmap");
    # the first vectorised backward is the probe, and its failure names the option and the fix.
    import hf_subspace._batched_product as batched_module
    from hf_subspace import HessianOperator

    real_grad = torch.autograd.grad

    def no_vmap(*args, **kwargs):
        if kwargs.get("is_grads_batched"):
            raise RuntimeError("NYI: querying is_contiguous inside of vmap for memory_format other than contiguous")
        return real_grad(*args, **kwargs)

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    batches = [(torch.randn(5, 3), torch.randn(5, 1))]

    def loss_fn(m, batch):
        return ((m(batch[0]) - batch[1]) ** 2).mean()

    op = HessianOperator(model, batches, loss_fn, block_product="batched")
    reference = HessianOperator(model, batches, loss_fn, block_product="loop").matmat(torch.eye(op.dim)[:, :2])
    torch.testing.assert_close(op.matmat(torch.eye(op.dim)[:, :2]), reference)  # vmap works here
    refused = HessianOperator(model, batches, loss_fn, block_product="batched")
    monkeypatch.setattr(batched_module.torch.autograd, "grad", no_vmap)
    with pytest.raises(ValueError, match=r"block_product='batched' is not available.*NYI.*block_product='loop'"):
        refused.matmat(torch.eye(op.dim)[:, :2])
