"""Trace (Hutch++ / Hutchinson) and spectral density (stochastic Lanczos quadrature) against dense matrices with known
spectra."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hf_subspace
from hf_subspace.operator import MatrixOperator


def _matrix(lam: torch.Tensor, seed: int = 0) -> MatrixOperator:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(lam.numel(), lam.numel(), generator=gen, dtype=torch.float64))
    h = (q * lam) @ q.T
    return MatrixOperator((h + h.T) / 2)


def _hessian_like(d: int = 400, seed: int = 0) -> torch.Tensor:
    """A few outliers over a bulk near 0, partly negative (float64)."""
    gen = torch.Generator().manual_seed(seed)
    bulk = 0.4 * torch.rand(d - 6, generator=gen, dtype=torch.float64) - 0.1
    return torch.cat([torch.tensor([30.0, 12.0, 8.0, 5.0, 3.0, 2.0], dtype=torch.float64), bulk])


@pytest.mark.parametrize("method", ["hutch++", "hutchinson"])
def test_trace_within_three_standard_errors(method: str) -> None:
    # A reported error is a statement about a distribution: over 40 seeds at most 2 estimates may fall outside 3
    # standard errors (with 20 Hutchinson terms, Student's t gives ~0.7 % each), and the errors must not be biased.
    lam = _hessian_like()
    op = _matrix(lam)
    exact = float(lam.sum())
    scores = []
    for seed in range(40):
        estimate, error = hf_subspace.hessian_trace(op, num_matvecs=60, seed=seed, method=method)
        assert error > 0
        scores.append((estimate - exact) / error)
    assert sum(abs(z) > 3 for z in scores) <= 2, scores
    assert abs(float(np.mean(scores))) < 0.5
    assert op.num_matvecs == 40 * 60


def test_hutch_plus_plus_beats_hutchinson_on_outliers() -> None:
    op = _matrix(_hessian_like())
    _, err_pp = hf_subspace.hessian_trace(op, num_matvecs=60, seed=0)
    _, err_h = hf_subspace.hessian_trace(op, num_matvecs=60, seed=0, method="hutchinson")
    assert err_pp < 0.5 * err_h


def test_trace_bad_input() -> None:
    op = _matrix(_hessian_like(50))
    with pytest.raises(ValueError, match="method='power'"):
        hf_subspace.hessian_trace(op, 10, method="power")
    with pytest.raises(ValueError, match="num_matvecs=3 must be at least 4"):
        hf_subspace.hessian_trace(op, 3)


def test_density_integrates_to_one_and_its_mean_is_trace_over_d() -> None:
    lam = _hessian_like()
    d = lam.numel()
    grid, density = hf_subspace.spectral_density(_matrix(lam), num_probes=20, lanczos_steps=40, seed=0)
    assert grid.shape == density.shape == (1000,)
    assert (density >= 0).all()
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-6)
    mean = float(np.trapezoid(grid * density, grid))
    # the mean is the average of v^T H v over unit probes: an estimate of tr(H)/d with error ~ sqrt(2 sum lam^2)/d
    spread = float((2 * (lam**2).sum()) ** 0.5 / d / 20**0.5)
    assert abs(mean - float(lam.sum()) / d) <= 3 * spread


def test_density_quadrature_is_exact_for_polynomials() -> None:
    # With steps >= (number of distinct eigenvalues), Gauss quadrature is exact: the nodes are the eigenvalues and the
    # density's mass sits on them; for a 4-point spectrum the nodes are exactly those 4 values.
    lam = torch.tensor([5.0, 1.0, -1.0, 0.5] * 25, dtype=torch.float64)
    grid, density, nodes, weights = hf_subspace.spectral_density(
        _matrix(lam), num_probes=3, lanczos_steps=10, sigma=0.05, return_quadrature=True
    )
    heavy = np.nan_to_num(weights) > 1e-8  # past the breakdown only rounding-level weights remain
    found = np.unique(np.round(nodes[heavy], 6))
    np.testing.assert_allclose(found, [-1.0, 0.5, 1.0, 5.0], atol=1e-6)
    np.testing.assert_allclose(np.nansum(weights, axis=1), 1.0, atol=1e-12)
    # the heaviest peak: the eigenvalue of multiplicity 25 with the largest Gaussian height is any of the four
    assert min(abs(grid[np.argmax(density)] - value) for value in (-1.0, 0.5, 1.0, 5.0)) < 0.01


def test_float32_density_has_the_moments_of_float64_and_no_ghosts() -> None:
    # The quadrature of a float32 operator (float32 reorthogonalisation) against the same probes in float64: the
    # moments sum_j w_j theta_j^p of each probe agree to float32 accuracy. Low moments are right even without any
    # reorthogonalisation, so the test also counts the nodes at the outliers 30 and 12 after 60 steps: plain Lanczos
    # grows spurious copies of converged outliers (7-9 each here); reorthogonalised, each appears once.
    lam = _hessian_like()
    op64 = _matrix(lam)
    op32 = MatrixOperator(op64.matrix.float())
    out = {}
    for name, op in (("64", op64), ("32", op32)):
        _, _, nodes, weights = hf_subspace.spectral_density(op, 4, 60, seed=1, return_quadrature=True)
        ok = ~np.isnan(nodes)
        theta = np.where(ok, nodes, 0.0)
        out[name] = [np.where(ok, weights * theta**p, 0.0).sum(axis=1) for p in (0, 1, 2, 3)]
        for outlier in (30.0, 12.0):
            assert (np.abs(theta - outlier) < 1e-2).sum(axis=1).tolist() == [1] * 4, (name, outlier)
    for p, (a, b) in enumerate(zip(out["64"], out["32"])):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6 * 30.0**p, err_msg=f"moment {p}")
