"""SubspaceBasis, the update rule and the metrics against explicit projector matrices and hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from hf_subspace import SubspaceBasis
from hf_subspace.metrics import (
    METRIC_DESCRIPTIONS,
    AlignmentEMA,
    custom_scalar_layout,
    effective_learning_rates,
    eigenvalue_tag,
)
from hf_subspace.subspace import projected_update_, vectors_norm


def _basis(d: int = 40, k: int = 4, seed: int = 0) -> SubspaceBasis:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    return SubspaceBasis(q, torch.arange(k, 0, -1, dtype=torch.float64))


def _split(x: torch.Tensor) -> list[torch.Tensor]:
    return [x[:12].reshape(3, 4), x[12:15], x[15:].reshape(5, 5)]


def test_flat_projections_match_projector_matrix() -> None:
    basis = _basis()
    p = basis.vectors @ basis.vectors.T
    x = torch.randn(40, dtype=torch.float64)
    assert torch.allclose(basis.project_dominant(x), p @ x)
    assert torch.allclose(basis.project_bulk(x), x - p @ x)
    assert basis.dominant_fraction(x) == pytest.approx(float(torch.linalg.norm(p @ x) / torch.linalg.norm(x)))
    chi, bulk = basis.dominant_fraction(x), basis.bulk_fraction(x)
    assert chi**2 + bulk**2 == pytest.approx(1.0)
    assert basis.dominant_fraction(torch.zeros(40, dtype=torch.float64)) == 0.0
    assert basis.bulk_fraction(torch.zeros(40, dtype=torch.float64)) == 0.0
    # exact ends of the range
    assert basis.dominant_fraction(basis.vectors[:, 0] * 3) == pytest.approx(1.0)
    assert basis.bulk_fraction(basis.vectors @ torch.ones(4, dtype=torch.float64)) < 1e-12
    assert basis.dominant_fraction(basis.project_bulk(x)) < 1e-12


def test_parameter_lists_match_flat_and_in_place() -> None:
    basis = _basis()
    x = torch.randn(40, dtype=torch.float64)
    parts = _split(x.clone())
    assert torch.allclose(torch.cat([t.reshape(-1) for t in basis.project_dominant(parts)]), basis.project_dominant(x))
    assert torch.allclose(torch.cat([t.reshape(-1) for t in basis.project_bulk(parts)]), basis.project_bulk(x))
    assert basis.dominant_fraction(parts) == pytest.approx(basis.dominant_fraction(x))
    assert basis.bulk_fraction(parts) == pytest.approx(basis.bulk_fraction(x))
    basis.project_dominant_(parts)
    assert torch.allclose(torch.cat([t.reshape(-1) for t in parts]), basis.project_dominant(x))
    parts = _split(x.clone())
    basis.project_bulk_(parts)
    assert torch.allclose(torch.cat([t.reshape(-1) for t in parts]), basis.project_bulk(x))


def test_float32_parameters_with_float32_basis_keep_precision() -> None:
    basis = _basis().to(dtype=torch.float32)
    x = torch.randn(40) + basis.vectors @ torch.randn(4) * 10
    parts = _split(x.clone())
    basis.project_bulk_(parts)
    assert basis.dominant_fraction(parts) < 1e-5
    parts = _split(x.clone())
    basis.project_dominant_(parts)
    assert basis.bulk_fraction(parts) < 1e-5


def test_overlap_distance_state_dict_and_errors() -> None:
    a, b = _basis(seed=0), _basis(seed=1)
    assert a.overlap(a) == pytest.approx(1.0)
    assert a.distance(a) < 1e-7
    assert 0.0 <= a.overlap(b) < 1.0
    ref = torch.linalg.matrix_norm(a.vectors @ a.vectors.T - b.vectors @ b.vectors.T, ord=2)
    assert a.distance(b) == pytest.approx(float(ref), rel=1e-6)
    c = SubspaceBasis.from_state_dict(a.state_dict())
    assert torch.equal(c.vectors, a.vectors) and torch.equal(c.eigenvalues, a.eigenvalues)
    with pytest.raises(ValueError, match="d=40"):
        a.project_dominant(torch.zeros(39, dtype=torch.float64))
    with pytest.raises(ValueError, match="basis has dimension"):
        a.project_dominant([torch.zeros(3, dtype=torch.float64)])
    with pytest.raises(ValueError, match="1 <= k <= d"):
        SubspaceBasis(torch.zeros(3, 0))


def test_vectors_norm_in_low_precision_does_not_overflow() -> None:
    # 300² · 1000 overflows float16 (max 65504) if squared and summed in half precision.
    big = [torch.full((1000,), 300.0, dtype=torch.float16), torch.full((10,), 1.0, dtype=torch.bfloat16)]
    expected = (300.0**2 * 1000 + 10) ** 0.5
    assert vectors_norm(big) == pytest.approx(expected, rel=1e-3)
    assert vectors_norm(big[0]) == pytest.approx(300.0 * 1000**0.5, rel=1e-3)
    assert vectors_norm([]) == 0.0
    x = torch.randn(40, dtype=torch.float64)
    assert vectors_norm(_split(x)) == pytest.approx(float(torch.linalg.norm(x)), rel=1e-12)


@pytest.mark.parametrize("mode", ["dominant", "bulk"])
def test_projected_update_matches_the_paper_rule_with_explicit_projector(mode: str) -> None:
    basis = _basis()
    p = basis.vectors @ basis.vectors.T
    g = torch.Generator().manual_seed(3)
    theta_t = torch.randn(40, generator=g, dtype=torch.float64)
    theta_new = theta_t + 0.1 * torch.randn(40, generator=g, dtype=torch.float64)
    delta = theta_new - theta_t
    params, old, buffers = _split(theta_new.clone()), _split(theta_t.clone()), _split(delta.clone())
    coeffs = projected_update_(params, old, buffers, basis, mode)
    expected = theta_t + p @ delta if mode == "dominant" else theta_new - p @ delta
    assert torch.allclose(torch.cat([t.reshape(-1) for t in params]), expected, atol=1e-14)
    assert torch.allclose(torch.cat([t.reshape(-1) for t in buffers]), expected - theta_t, atol=1e-14)
    assert torch.allclose(coeffs, basis.vectors.T @ delta)
    # Dom-SGD moves only inside span(V), Bulk-SGD only outside it.
    applied = expected - theta_t
    if mode == "dominant":
        assert basis.bulk_fraction(applied) < 1e-12 < basis.dominant_fraction(applied)
    else:
        assert basis.dominant_fraction(applied) < 1e-12 < basis.bulk_fraction(applied)


def test_projected_update_leaves_fixed_parameters_exactly_as_they_are() -> None:
    basis = _basis()
    g = torch.Generator().manual_seed(4)
    theta_t = torch.randn(40, generator=g, dtype=torch.float64)
    delta = 0.1 * torch.randn(40, generator=g, dtype=torch.float64)
    delta[12:15] = 0.0  # the second tensor got no gradient: the optimizer left it alone
    params, old, buffers = _split(theta_t + delta), _split(theta_t.clone()), _split(delta.clone())
    kept = params[1].clone()
    projected_update_(params, old, buffers, basis, "bulk", fixed=[False, True, False])
    assert torch.equal(params[1], kept) and torch.equal(buffers[1], torch.zeros(3, dtype=torch.float64))
    full = basis.project_bulk(delta)
    assert torch.allclose(params[0].reshape(-1), theta_t[:12] + full[:12])
    with pytest.raises(ValueError, match="mode"):
        projected_update_(params, old, buffers, basis, "sideways")  # type: ignore[arg-type]


def test_effective_learning_rates_of_gd_dom_and_bulk_steps() -> None:
    basis = _basis()
    g = torch.randn(40, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    lr = 0.03
    gd = effective_learning_rates(basis, -lr * g, g)
    assert gd == pytest.approx((lr, lr), rel=1e-12)  # gradient descent: η_dom = η_bulk = lr
    dom = effective_learning_rates(basis, -lr * basis.project_dominant(g), g)
    bulk = effective_learning_rates(basis, _split(-lr * basis.project_bulk(g)), g)  # a per-parameter update
    assert dom[0] == pytest.approx(lr) and abs(dom[1]) < 1e-14
    assert abs(bulk[0]) < 1e-14 and bulk[1] == pytest.approx(lr)


def test_effective_learning_rates_hand_computed_and_undefined() -> None:
    basis = SubspaceBasis(torch.eye(3, dtype=torch.float64)[:, :1])  # V = e₁
    g = torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64)
    # η_dom = −⟨Δ, Pg⟩/‖Pg‖² = −(−0.5)/1; η_bulk = −⟨Δ, (I−P)g⟩/‖(I−P)g‖² = −(0.2·2)/4: negative, the update climbs.
    assert effective_learning_rates(basis, torch.tensor([-0.5, 0.2, 7.0], dtype=torch.float64), g) == pytest.approx(
        (0.5, -0.1)
    )
    eta_dom, eta_bulk = effective_learning_rates(basis, torch.ones(3, dtype=torch.float64), torch.tensor([0.0, 1, 0]))
    assert math.isnan(eta_dom) and eta_bulk == pytest.approx(-1.0)  # Pg = 0: undefined, never logged


def test_alignment_ema_values_and_state() -> None:
    ema = AlignmentEMA(decay=0.9)
    assert ema.value is None
    values = [ema.update(chi) for chi in (0.5, 1.0, 0.0)]
    assert values == pytest.approx([0.5, 0.9 * 0.5 + 0.1 * 1.0, 0.9 * 0.55])  # first value taken as is
    copy = AlignmentEMA(decay=0.5)
    copy.load_state_dict(ema.state_dict())
    assert (copy.decay, copy.value, copy.count) == (0.9, pytest.approx(0.495), 3)
    assert AlignmentEMA(decay=0.0).update(0.3) == 0.3


def test_eigenvalue_tags_sort_and_extra_chart_only_when_computed() -> None:
    tags = [eigenvalue_tag(i, k=10, total=12) for i in range(1, 13)]
    assert tags[0] == "eigenvalue_top_01" and tags[9] == "eigenvalue_top_10" and tags[10] == "eigenvalue_next_11"
    assert sorted(tags[:10]) == tags[:10]
    assert eigenvalue_tag(7, k=5, total=120) == "eigenvalue_next_007"
    charts = {name for group in custom_scalar_layout().values() for name in group}
    assert "eigenvalues k+1..2k" not in charts and "top-k eigenvalues" in charts
    charts = {name for group in custom_scalar_layout(extra_eigenvalues=True).values() for name in group}
    assert "eigenvalues k+1..2k" in charts
    assert "effective_lr_bulk" in METRIC_DESCRIPTIONS and "negative" in METRIC_DESCRIPTIONS


def test_a_basis_over_parameter_shards_in_one_process_acts_like_the_whole_basis() -> None:
    """``LocalShards`` (the FSDP2 layout) with one process: every operation equals the whole basis' (the 2-process
    case, with DTensors, is tests/test_fsdp_trainer.py)."""
    from hf_subspace._shards import LocalShards

    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(3, 4, generator=gen, dtype=torch.float64), torch.randn(5, generator=gen, dtype=torch.float64)]
    dim = sum(p.numel() for p in params)
    vectors = torch.linalg.qr(torch.randn(dim, 3, generator=gen, dtype=torch.float64))[0]
    layout = LocalShards(dim, (12, 5), torch.arange(dim))
    whole, local = SubspaceBasis(vectors), SubspaceBasis(vectors, rows=layout)
    x = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
    assert torch.equal(local.coefficients(x), whole.coefficients(x))
    assert local.dominant_fraction(x) == pytest.approx(whole.dominant_fraction(x), rel=1e-14)
    assert local.bulk_fraction(x) == pytest.approx(whole.bulk_fraction(x), rel=1e-14)
    for a, b in zip(local.project_bulk(x), whole.project_bulk(x)):  # type: ignore[arg-type]
        assert torch.allclose(a, b, rtol=0, atol=1e-14)
    for mode in ("dominant", "bulk"):
        runs = []
        for basis in (whole, local):
            moved = [p + 0.1 * t for p, t in zip(params, x)]
            delta = [m - p for m, p in zip(moved, params)]
            coeffs = projected_update_(moved, params, delta, basis, mode)  # type: ignore[arg-type]
            runs.append((moved, delta, coeffs))
        for got, want in zip(runs[1][0] + runs[1][1], runs[0][0] + runs[0][1]):
            assert torch.allclose(got, want, rtol=0, atol=1e-14), mode
    grad = torch.randn(dim, generator=gen, dtype=torch.float64)
    assert effective_learning_rates(local, x, grad) == pytest.approx(effective_learning_rates(whole, x, grad))
    assert vectors_norm(x, reduce=lambda t: t) == pytest.approx(vectors_norm(x), rel=1e-15)
    restored = SubspaceBasis.from_state_dict(local.state_dict())
    assert isinstance(restored.rows, LocalShards) and restored.rows.sizes == (12, 5)
    with pytest.raises(ValueError, match="local shards"):
        local.coefficients([params[0]])
