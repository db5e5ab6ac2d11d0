"""Kept first-order graphs (HessianOperator.reusing_graphs, graph_cache_bytes): same products, invalidated on change."""

from __future__ import annotations

import pytest
import torch
from _reference import SmallCNN, TanhMLP, classification_batches, dense_hessian

from hf_subspace import HessianOperator, hessian_trace, spectral_density, top_eigenpairs
from hf_subspace._notices import ProgressOperator


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((torch.linalg.norm(a - b) / torch.linalg.norm(b)).item())


def _mlp(sizes: list[int]) -> tuple[torch.nn.Module, list[dict]]:
    torch.manual_seed(0)
    return TanhMLP().double(), classification_batches(sizes, (5,))


def _block(dim: int, m: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(dim, m, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("sizes", [[9], [4, 7, 1]])
@pytest.mark.parametrize("block_product", ["loop", "batched"])
def test_kept_graphs_give_the_uncached_products(sizes, block_product) -> None:
    model, batches = _mlp(sizes)
    dense = dense_hessian(model, batches)
    plain = HessianOperator(model, batches, graph_cache_bytes=0, block_product=block_product)
    op = HessianOperator(model, batches, block_product=block_product)
    blocks = [_block(op.dim, m, seed) for seed, m in enumerate([3, 1, 4])]
    with op.reusing_graphs():
        for block in blocks:
            cached = op.matmat(block)
            assert torch.allclose(cached, plain.matmat(block), rtol=1e-12, atol=1e-14)
            assert _rel(cached, dense @ block) <= 1e-10
        assert op.num_graphs_built == len(batches)  # one forward + gradient per batch for all three products
        loss, grad = op.loss_and_gradient()
    assert op.num_matvecs == plain.num_matvecs == 8 and op.num_passes == plain.num_passes == 3
    assert plain.num_graphs_built == 3 * len(batches)
    plain_loss, plain_grad = plain.loss_and_gradient()
    assert loss == pytest.approx(plain_loss, rel=1e-14) and torch.allclose(grad, plain_grad, rtol=1e-12)
    assert not op._graphs.graphs  # the scope's end frees them


def test_cnn_several_batches_and_solvers_reuse_within_one_call() -> None:
    torch.manual_seed(0)
    model = SmallCNN().double()
    batches = classification_batches([3, 2, 4], (2, 6, 6))
    dense = dense_hessian(model, batches)
    op = HessianOperator(model, batches)
    result = top_eigenpairs(op, 3, seed=0)  # the solver opens the scope itself
    assert op.num_graphs_built == len(batches) and not op._graphs.graphs
    assert torch.allclose(result.eigenvalues, torch.linalg.eigvalsh(dense).flip(0)[:3], rtol=1e-6)
    built = op.num_graphs_built
    with ProgressOperator(op, None, "refresh") as wrapped:  # the trainer's wrapper passes the scope on
        top_eigenpairs(wrapped, 3, method="lobpcg", init=result.eigenvectors, seed=0)
    hessian_trace(op, 9, seed=0)
    spectral_density(op, 2, 5, seed=0)
    assert op.num_graphs_built == built + 3 * len(batches)
    before = op.num_graphs_built
    op.matmat(_block(op.dim, 2))
    op.matmat(_block(op.dim, 2))
    assert op.num_graphs_built == before + 2 * len(batches)  # outside a scope nothing is kept


def test_budget_keeps_the_batches_that_fit_and_zero_disables() -> None:
    model, batches = _mlp([6, 3, 5])
    first = HessianOperator(model, batches[:1])
    with first.reusing_graphs():
        first.matvec(_block(first.dim, 1)[:, 0])
        size = first._graphs.used
    assert size > 0
    block = _block(first.dim, 2)
    reference = HessianOperator(model, batches, graph_cache_bytes=0).matmat(block)
    for budget, kept in [(size, 1), (1, 0), (0, 0), (None, 3)]:
        op = HessianOperator(model, batches, graph_cache_bytes=budget)
        with op.reusing_graphs():
            for _ in range(3):
                assert torch.allclose(op.matmat(block), reference, rtol=1e-12, atol=1e-14)
            assert len(op._graphs.graphs) == kept, budget
        assert op.num_graphs_built == 3 + 2 * (3 - kept), budget


def _stale_check(change) -> None:
    """A product after ``change`` (inside the same scope) equals a fresh operator's at the new state."""
    model, batches = _mlp([5, 4])
    op = HessianOperator(model, batches)
    block = _block(op.dim, 2)
    with op.reusing_graphs():
        before = op.matmat(block)
        change(model, batches)
        after = op.matmat(block)
    expected = HessianOperator(model, batches, graph_cache_bytes=0).matmat(block)
    assert _rel(expected, before) > 1e-3  # the change moved the Hessian
    assert torch.allclose(after, expected, rtol=1e-12, atol=1e-14)
    assert op.num_graphs_built == 2 * len(batches)


def test_optimizer_step_between_products_drops_the_graphs() -> None:
    def sgd_step(model, batches):
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        model(**batches[0])["loss"].backward()
        opt.step()

    _stale_check(sgd_step)


def test_replaced_parameter_storage_drops_the_graphs() -> None:
    # p.data = ... leaves autograd's version counters alone: a kept graph would silently give the old Hessian.
    def replace(model, batches):
        model.fc1.weight.data = model.fc1.weight.data * 1.5

    _stale_check(replace)


def test_replaced_batch_tensor_drops_the_graphs() -> None:
    def replace(model, batches):
        batches[1]["x"] = batches[1]["x"] * 2.0

    _stale_check(replace)


def test_graph_cache_bytes_is_checked() -> None:
    model, batches = _mlp([4])
    with pytest.raises(ValueError, match="graph_cache_bytes=-1 must be >= 0"):
        HessianOperator(model, batches, graph_cache_bytes=-1)
    with pytest.raises(ValueError, match=r"graph_cache_bytes=1000: .*finite_difference.*Leave graph_cache_bytes"):
        HessianOperator(model, batches, graph_cache_bytes=1000, product="finite_difference")
    op = HessianOperator(model, batches, product="finite_difference")  # the default: nothing kept, no error
    with op.reusing_graphs():
        op.matvec(_block(op.dim, 1)[:, 0])
    assert not op._graphs.graphs
