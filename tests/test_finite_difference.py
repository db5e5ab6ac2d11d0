"""Finite-difference Hessian-vector products (``product="finite_difference"``) against the exact ones."""

from __future__ import annotations

import pytest
import torch
from _reference import TanhMLP, classification_batches

from hf_subspace import HessianOperator, top_eigenpairs

#: Relative error allowed against the exact product: the u^(2/3) of the step rule with a margin (docs/performance.md).
TOL = {torch.float64: 1e-8, torch.float32: 1e-3}


def _problem(dtype: torch.dtype) -> tuple[torch.nn.Module, list[dict]]:
    torch.manual_seed(0)
    model = TanhMLP(n_in=12, hidden=30, n_out=4).to(dtype)
    return model, classification_batches([7, 3, 9, 4], (12,), n_out=4, dtype=dtype)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((torch.linalg.norm((a - b).double()) / torch.linalg.norm(b.double())).item())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_finite_difference_products_match_double_backward(dtype: torch.dtype) -> None:
    model, batches = _problem(dtype)
    exact = HessianOperator(model, batches)
    fd = HessianOperator(model, batches, product="finite_difference")
    before = [p.detach().clone() for p in model.parameters()]
    block = torch.randn(exact.dim, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    block[:, 2] = 0.0  # a zero column gives a zero product (no step of infinite size)
    hv, hv_fd = exact.matmat(block), fd.matmat(block)
    assert _rel(hv_fd, hv) <= TOL[dtype]
    assert torch.count_nonzero(hv_fd[:, 2]) == 0
    # θ restored bitwise after the pass; the contract is the same: counts, loss, gradient.
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))
    assert fd.num_matvecs == exact.num_matvecs == 3 and fd.num_items == exact.num_items
    (loss, grad), (loss_fd, grad_fd) = exact.loss_and_gradient(), fd.loss_and_gradient()
    assert loss_fd == pytest.approx(loss, rel=1e-12) and torch.equal(grad, grad_fd)


def test_finite_difference_eigenpairs_match_float64() -> None:
    model, batches = _problem(torch.float64)
    ref = top_eigenpairs(HessianOperator(model, batches), 3, tol=1e-9)
    res = top_eigenpairs(HessianOperator(model, batches, product="finite_difference"), 3, tol=1e-7)
    assert torch.allclose(res.eigenvalues, ref.eigenvalues, rtol=1e-7)


def test_finite_difference_refuses_non_finite_and_unknown_product() -> None:
    model, batches = _problem(torch.float64)
    with pytest.raises(ValueError, match="product="):
        HessianOperator(model, batches, product="forward")  # type: ignore[arg-type]
    op = HessianOperator(model, batches, product="finite_difference")
    block = torch.full((op.dim, 1), float("nan"), dtype=torch.float64)
    with pytest.raises(FloatingPointError):
        op.matmat(block)


def test_batched_block_products_are_refused_with_finite_differences() -> None:
    model, batches = _problem(torch.float64)
    with pytest.raises(ValueError, match="block_product='batched'"):
        HessianOperator(model, batches, product="finite_difference", block_product="batched")
