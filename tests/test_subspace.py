"""SubspaceBasis against explicit projector matrices."""

from __future__ import annotations

import pytest
import torch

from hf_subspace import SubspaceBasis
from hf_subspace.subspace import vectors_norm


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
