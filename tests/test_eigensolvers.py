"""Eigensolvers against dense ``torch.linalg.eigh`` references on Hessian-like spectra."""

from __future__ import annotations

import functools

import pytest
import torch

from hf_subspace import distributed
from hf_subspace.eigensolvers import METHODS, EigenResult, top_eigenpairs
from hf_subspace.operator import MatrixOperator

ALL_METHODS = ["lanczos", "lobpcg", "eigsh"]

# A few large outliers, a bulk near zero (partly negative), and a small or a LARGE negative tail.
OUTLIERS = [20.0, 17.0, 15.0, 13.0, 12.0, 10.0, 8.0, 6.0, 5.0, 4.0, 3.5, 3.0]
POWER_LAW = (20.0 * torch.arange(1, 31, dtype=torch.float64) ** -0.8).tolist()
NEGATIVES = {"mild": [-1.0, -0.5, -0.2], "large": [-50.0, -30.0, -2.0]}


def _spectrum(d: int, outliers: list[float], negatives: list[float], gen: torch.Generator) -> torch.Tensor:
    bulk = 0.3 * torch.rand(d - len(outliers) - len(negatives), generator=gen, dtype=torch.float64) ** 3
    bulk[: len(bulk) // 5] *= -0.3
    return torch.cat([torch.tensor(outliers, dtype=torch.float64), bulk, torch.tensor(negatives, dtype=torch.float64)])


@functools.cache
def _problem(d: int, shape: str, negatives: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A symmetric ``[d, d]`` matrix with a Hessian-like spectrum and its dense reference (descending)."""
    gen = torch.Generator().manual_seed(seed)
    lam = _spectrum(d, OUTLIERS if shape == "outliers" else POWER_LAW, NEGATIVES[negatives], gen)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    h = (q * lam) @ q.T
    h = (h + h.T) / 2
    values, vectors = torch.linalg.eigh(h)
    return h, values.flip(0), vectors.flip(1)


def _subspace_distance(v: torch.Tensor, w: torch.Tensor) -> float:
    """``||V V^T - W W^T||_2`` for orthonormal ``V, W`` with equal column counts (= sine of the largest angle)."""
    sigma = torch.linalg.svdvals(v.T.to(torch.float64) @ w.to(torch.float64))
    return float((1 - sigma.min() ** 2).clamp_min(0).sqrt())


def _check_against_reference(
    result: EigenResult, h: torch.Tensor, ref_values: torch.Tensor, ref_vectors: torch.Tensor, k: int
) -> None:
    assert result.eigenvalues.shape == (k,)
    assert result.eigenvectors.shape == (h.shape[0], k)
    assert result.eigenvectors.dtype == h.dtype
    assert result.eigenvalues.dtype == h.dtype
    rel_err = ((result.eigenvalues - ref_values[:k]).abs() / ref_values[:k].abs()).max()
    assert rel_err <= 1e-4, f"{result.method}: eigenvalue relative error {rel_err:.2e}"
    assert _subspace_distance(result.eigenvectors, ref_vectors[:, :k]) <= 1e-3
    assert bool((result.eigenvalues[:-1] >= result.eigenvalues[1:]).all()), "eigenvalues must be descending"
    gram = result.eigenvectors.T @ result.eigenvectors
    assert torch.allclose(gram, torch.eye(k, dtype=h.dtype), atol=1e-8)
    true_res = (h @ result.eigenvectors - result.eigenvectors * result.eigenvalues).norm(dim=0)
    scale = result.eigenvalues.abs().max()
    assert float(true_res.max()) <= 10 * 1e-6 * float(scale)
    assert torch.allclose(result.residuals, true_res, rtol=0.5, atol=1e-9 * float(scale))
    # sign convention: the entry of largest magnitude of every column is positive
    idx = result.eigenvectors.abs().argmax(dim=0)
    assert bool((result.eigenvectors[idx, torch.arange(k)] > 0).all())


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize(
    ("d", "shape", "negatives", "k"),
    [(600, "outliers", "mild", 8), (1000, "power_law", "large", 10), (1000, "outliers", "large", 5)],
)
def test_matches_dense_eigh(method: str, d: int, shape: str, negatives: str, k: int) -> None:
    h, ref_values, ref_vectors = _problem(d, shape, negatives)
    op = MatrixOperator(h)
    result = top_eigenpairs(op, k, method=method)
    assert result.method == method
    assert result.converged
    assert result.num_matvecs == op.num_matvecs
    assert result.num_calls >= 1
    _check_against_reference(result, h, ref_values, ref_vectors, k)
    if negatives == "large":
        # top-k by algebraic value: the -50 / -30 eigenvalues (largest in magnitude) must not come back
        assert bool((result.eigenvalues > 0).all())


@pytest.mark.parametrize("method", ALL_METHODS)
def test_no_gap_at_the_top(method: str) -> None:
    # A cubic, gapless spectrum: slow for every method (Lanczos needs > 40 steps, so its basis has to grow).
    d, k = 300, 4
    gen = torch.Generator().manual_seed(11)
    lam = 10 * torch.linspace(-1, 1, d, dtype=torch.float64) ** 3
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    h = (q * lam) @ q.T
    h = (h + h.T) / 2
    ref_values, ref_vectors = torch.linalg.eigh(h)
    op = MatrixOperator(h)
    result = top_eigenpairs(op, k, method=method)
    assert result.converged and result.num_matvecs == op.num_matvecs
    _check_against_reference(result, h, ref_values.flip(0), ref_vectors.flip(1), k)


def test_eigsh_largest_magnitude_is_the_papers_choice() -> None:
    h, ref_values, _ = _problem(1000, "outliers", "large")
    op = MatrixOperator(h)
    result = top_eigenpairs(op, 5, method="eigsh", which="LM")
    expected = torch.tensor([20.0, 17.0, 15.0, -30.0, -50.0], dtype=torch.float64)
    torch.testing.assert_close(result.eigenvalues, expected, rtol=1e-6, atol=0)
    assert result.num_matvecs == op.num_matvecs
    la = top_eigenpairs(MatrixOperator(h), 5, method="eigsh", which="LA")
    torch.testing.assert_close(la.eigenvalues, ref_values[:5], rtol=1e-8, atol=0)


def test_warm_start_needs_far_fewer_operator_applications() -> None:
    d, k = 1000, 10
    h, _, _ = _problem(d, "power_law", "mild")
    gen = torch.Generator().manual_seed(7)
    e = torch.randn(d, d, generator=gen, dtype=torch.float64)
    e = (e + e.T) / 2
    e /= torch.linalg.matrix_norm(e)  # unit Frobenius norm
    h2 = h + 1e-3 * float(torch.linalg.matrix_norm(h, 2)) * e
    ref_values, ref_vectors = torch.linalg.eigh(h2)
    ref_values, ref_vectors = ref_values.flip(0), ref_vectors.flip(1)

    cold = top_eigenpairs(MatrixOperator(h), k, method="lobpcg")
    assert cold.converged
    cold2 = top_eigenpairs(MatrixOperator(h2), k, method="lobpcg")
    lanczos_cold = top_eigenpairs(MatrixOperator(h2), k, method="lanczos")
    op = MatrixOperator(h2)
    warm = top_eigenpairs(op, k, init=cold.eigenvectors)
    assert warm.method == "lobpcg"
    assert warm.converged and warm.num_matvecs == op.num_matvecs
    _check_against_reference(warm, h2, ref_values, ref_vectors, k)
    assert warm.num_matvecs <= 0.5 * cold.num_matvecs, (warm.num_matvecs, cold.num_matvecs)
    assert warm.num_matvecs <= 0.5 * cold2.num_matvecs, (warm.num_matvecs, cold2.num_matvecs)
    # Lanczos needs fewer columns from a cold start than cold LOBPCG, but one data pass per column:
    assert warm.num_matvecs <= lanczos_cold.num_matvecs
    assert warm.num_calls <= 0.25 * lanczos_cold.num_calls, (warm.num_calls, lanczos_cold.num_calls)


def test_warm_start_from_exact_eigenvectors_converges_immediately() -> None:
    h, ref_values, ref_vectors = _problem(600, "outliers", "mild")
    op = MatrixOperator(h)
    result = top_eigenpairs(op, 6, init=ref_vectors[:, :6], buffer=0)
    assert result.converged and result.iterations == 0
    assert result.num_matvecs == op.num_matvecs == 6
    _check_against_reference(result, h, ref_values, ref_vectors, 6)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_float32_with_default_tolerance(method: str) -> None:
    h64, ref_values, ref_vectors = _problem(600, "outliers", "mild")
    h = h64.to(torch.float32)
    op = MatrixOperator(h)
    k = 5
    result = top_eigenpairs(op, k, method=method)
    assert result.converged
    assert result.eigenvectors.dtype == torch.float32 and result.eigenvalues.dtype == torch.float32
    assert result.num_matvecs == op.num_matvecs
    rel_err = ((result.eigenvalues.double() - ref_values[:k]).abs() / ref_values[:k].abs()).max()
    assert rel_err <= 1e-3
    assert _subspace_distance(result.eigenvectors, ref_vectors[:, :k]) <= 2e-2
    true_res = h64 @ result.eigenvectors.double() - result.eigenvectors.double() * result.eigenvalues.double()
    assert float(true_res.norm(dim=0).max()) <= 2e-3 * 20.0


def test_lanczos_restarts_after_invariant_subspace_breakdown() -> None:
    # Three distinct eigenvalues: a Krylov space has dimension 3, but the top 3 need 4 directions (20 is double).
    d = 200
    lam = torch.zeros(d, dtype=torch.float64)
    lam[:4] = torch.tensor([20.0, 20.0, 7.0, 7.0])
    gen = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    h = (q * lam) @ q.T
    h = (h + h.T) / 2
    for method in ALL_METHODS:
        op = MatrixOperator(h)
        result = top_eigenpairs(op, 4, method=method)
        assert result.converged, method
        torch.testing.assert_close(result.eigenvalues, lam[:4], rtol=1e-8, atol=1e-8)
        assert _subspace_distance(result.eigenvectors, q[:, :4]) <= 1e-6
        assert result.num_matvecs == op.num_matvecs


def test_default_method_and_reproducibility() -> None:
    h, _, _ = _problem(600, "outliers", "mild")
    first = top_eigenpairs(MatrixOperator(h), 4, seed=3)
    second = top_eigenpairs(MatrixOperator(h), 4, seed=3)
    assert first.method == "lanczos"
    assert torch.equal(first.eigenvectors, second.eigenvectors)
    assert torch.equal(first.eigenvalues, second.eigenvalues)
    warm = top_eigenpairs(MatrixOperator(h), 4, init=first.eigenvectors)
    assert warm.method == "lobpcg"
    # signs are normalised, so independent solves agree column by column
    assert torch.allclose(warm.eigenvectors, first.eigenvectors, atol=1e-5)
    assert set(METHODS) == set(ALL_METHODS)


def test_not_converging_warns_and_returns_best_estimate() -> None:
    h, ref_values, _ = _problem(1000, "power_law", "large")
    for method, iters in [("lobpcg", 2), ("lanczos", 12), ("eigsh", 1)]:
        op = MatrixOperator(h)
        with pytest.warns(RuntimeWarning, match="did not converge"):
            result = top_eigenpairs(op, 10, method=method, max_iters=iters)
        assert not result.converged
        assert result.eigenvalues.shape == (10,) and result.eigenvectors.shape == (1000, 10)
        assert result.num_matvecs == op.num_matvecs
        assert bool(torch.isfinite(result.eigenvalues).all())
        gram = result.eigenvectors.T @ result.eigenvectors
        assert torch.allclose(gram, torch.eye(10, dtype=h.dtype), atol=1e-8)
        assert float(result.eigenvalues[0]) == pytest.approx(float(ref_values[0]), rel=0.05)


class _NaNOperator(MatrixOperator):
    def matmat(self, block: torch.Tensor) -> torch.Tensor:
        out = super().matmat(block)
        out[0, 0] = float("nan")
        return out


@pytest.mark.parametrize("method", ALL_METHODS)
def test_bad_inputs(method: str) -> None:
    d = 120
    h, _, _ = _problem(d, "outliers", "mild")
    op = MatrixOperator(h)
    with pytest.raises(ValueError, match=r"k=0 must satisfy 1 <= k < d=120"):
        top_eigenpairs(op, 0, method=method)
    with pytest.raises(ValueError, match=r"k=120 must satisfy 1 <= k < d=120"):
        top_eigenpairs(op, d, method=method)
    with pytest.raises(ValueError, match=r"init must have shape \[d, m\] = \[120, m\]"):
        top_eigenpairs(op, 3, method=method, init=torch.randn(d + 1, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"init must have shape"):
        top_eigenpairs(op, 3, method=method, init=torch.randn(d, 3, 1, dtype=torch.float64))
    with pytest.raises(FloatingPointError, match=r"Hessian-vector product.*non-finite"):
        top_eigenpairs(_NaNOperator(h), 3, method=method)
    assert op.num_matvecs == 0


def test_unknown_method_and_bad_options() -> None:
    op = MatrixOperator(_problem(120, "outliers", "mild")[0])
    with pytest.raises(ValueError, match=r"Unknown eigensolver method 'power'.*eigsh, lanczos, lobpcg"):
        top_eigenpairs(op, 3, method="power")
    with pytest.raises(ValueError, match=r"which='SA' is not supported"):
        top_eigenpairs(op, 3, method="eigsh", which="SA")
    with pytest.raises(ValueError, match=r"tol=-1"):
        top_eigenpairs(op, 3, tol=-1.0)
    with pytest.raises(TypeError):
        top_eigenpairs(op, 3, method="lanczos", buffer=2)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_distributed_path_routes_decisions_through_rank_zero(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"flag": 0, "broadcast": 0}

    def broadcast_flag(flag: bool, src: int = 0) -> bool:
        calls["flag"] += 1
        return flag

    def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        calls["broadcast"] += 1
        return tensor

    monkeypatch.setattr(distributed, "broadcast_flag", broadcast_flag)
    monkeypatch.setattr(distributed, "broadcast", broadcast)
    h, ref_values, ref_vectors = _problem(600, "outliers", "mild")
    op = MatrixOperator(h)
    op.is_distributed = True
    result = top_eigenpairs(op, 4, method=method, progress=True)
    _check_against_reference(result, h, ref_values, ref_vectors, 4)
    assert calls["broadcast"] >= 3  # eigenvalues, eigenvectors, residuals
    if method != "eigsh":  # ARPACK's loop cannot be steered; its decisions follow from identical products
        assert calls["flag"] >= result.iterations


def _planted(d: int, top: list[float], seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Symmetric ``[d, d]`` with the given top eigenvalues over a bulk in [-0.2, 0.3] and its reference (descending)."""
    gen = torch.Generator().manual_seed(seed)
    lam = torch.cat([torch.tensor(top, dtype=torch.float64), 0.5 * torch.rand(d - len(top), generator=gen) - 0.2])
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    h = (q * lam) @ q.T
    h = (h + h.T) / 2
    values, vectors = torch.linalg.eigh(h)
    return h, values.flip(0), vectors.flip(1)


class _RecordingOperator(MatrixOperator):
    """Records the storage size (in elements) of every block it is given, to count d-sized vectors alive."""

    def __init__(self, matrix: torch.Tensor) -> None:
        super().__init__(matrix)
        self.storage_vectors: list[int] = []

    def matmat(self, block: torch.Tensor) -> torch.Tensor:
        self.storage_vectors.append(block.untyped_storage().nbytes() // (block.element_size() * self.dim))
        return super().matmat(block)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_restarted_lanczos_keeps_a_bounded_basis(dtype: torch.dtype) -> None:
    # The flat spectrum of test_no_gap_at_the_top needs ~100-150 Lanczos steps: several restarts of a 12-vector basis.
    d, k, ncv = 300, 4, 12
    gen = torch.Generator().manual_seed(11)
    lam = 10 * torch.linspace(-1, 1, d, dtype=torch.float64) ** 3
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    h = (q * lam) @ q.T
    h = ((h + h.T) / 2).to(dtype)
    op = _RecordingOperator(h)
    result = top_eigenpairs(op, k, method="lanczos", max_basis_vectors=ncv, max_iters=2000)
    assert result.converged
    assert result.num_matvecs > 3 * ncv, "the case must restart several times to test anything"
    # Every Lanczos vector handed to the operator is a column of one [ncv, d] storage: the basis never grows.
    assert max(op.storage_vectors) == ncv
    tol = 1e-6 if dtype == torch.float64 else 1e-3
    ref = torch.linalg.eigvalsh(h.double()).flip(0)[:k]
    assert float(((result.eigenvalues.double() - ref).abs() / ref.abs()).max()) <= 10 * tol
    true_res = h.double() @ result.eigenvectors.double() - result.eigenvectors.double() * result.eigenvalues.double()
    assert float(true_res.norm(dim=0).max()) <= 3 * tol * float(ref.abs().max())
    # the default basis is ARPACK's ncv, and unrestarted runs give the same answer
    default = top_eigenpairs(_RecordingOperator(h), k, method="lanczos", max_iters=2000)
    assert default.converged
    unbounded_op = _RecordingOperator(h)
    unbounded = top_eigenpairs(unbounded_op, k, method="lanczos", max_basis_vectors=d, max_iters=2000)
    assert max(unbounded_op.storage_vectors) == d
    torch.testing.assert_close(result.eigenvalues, unbounded.eigenvalues, rtol=10 * tol, atol=0)


def test_lanczos_basis_size_validation() -> None:
    op = MatrixOperator(_problem(120, "outliers", "mild")[0])
    with pytest.raises(ValueError, match=r"max_basis_vectors=5 must be at least k \+ 2 = 6"):
        top_eigenpairs(op, 4, method="lanczos", max_basis_vectors=5)
    with pytest.raises(ValueError, match=r"keep=3 must satisfy k=4 <= keep"):
        top_eigenpairs(op, 4, method="lanczos", keep=3)
    # a basis as large as d is allowed whatever k (the Krylov space is then complete)
    assert top_eigenpairs(op, 4, method="lanczos", max_basis_vectors=10_000).converged


@pytest.mark.parametrize("method", ["lanczos", "lobpcg"])
def test_eigengap_matches_dense_eigh(method: str) -> None:
    # lambda_5 = 12, lambda_6 = 10 in the outlier spectrum: the gap is 2.
    h, ref_values, _ = _problem(1000, "outliers", "large")
    k = 5
    options = {"buffer_residuals": True} if method == "lobpcg" else {}
    result = top_eigenpairs(MatrixOperator(h), k, method=method, **options)
    expected = float(ref_values[k - 1] - ref_values[k])
    assert result.eigengap is not None
    assert result.eigengap == pytest.approx(expected, rel=1e-6)
    # eigsh has no next Ritz value; LOBPCG without a buffer column neither
    assert top_eigenpairs(MatrixOperator(h), k, method="eigsh").eigengap is None
    assert top_eigenpairs(MatrixOperator(h), k, method="lobpcg", buffer=0).eigengap is None


def test_eigengap_of_a_warm_start_is_an_upper_estimate() -> None:
    # The buffer column of a warm LOBPCG is not converged: its Ritz value is below lambda_{k+1}, so the gap is over-
    # rather than under-estimated (Cauchy interlacing), and it is exact once the buffer converges.
    h, ref_values, ref_vectors = _problem(1000, "power_law", "mild")
    k = 6
    result = top_eigenpairs(MatrixOperator(h), k, init=ref_vectors[:, :k] + 1e-3 * ref_vectors[:, k : 2 * k])
    true_gap = float(ref_values[k - 1] - ref_values[k])
    assert result.eigengap is not None
    assert true_gap * (1 - 1e-6) <= result.eigengap <= 2 * true_gap


def test_warm_start_converged_at_iteration_zero_reports_no_random_eigengap() -> None:
    # init = the exact top-k eigenvectors: LOBPCG stops at iteration 0 with a random buffer column, whose Rayleigh
    # quotient (~ the bulk mean) once gave a gap of 11.9 for a true 2.0. The gap is then unknown (None); with k + 1
    # exact init columns the buffer is lambda_{k+1}'s eigenvector and the gap is exact.
    h, ref_values, ref_vectors = _problem(1000, "outliers", "large")
    k = 5
    true_gap = float(ref_values[k - 1] - ref_values[k])
    warm = top_eigenpairs(MatrixOperator(h), k, method="lobpcg", init=ref_vectors[:, :k])
    assert warm.iterations == 0 and warm.converged
    torch.testing.assert_close(warm.eigenvalues, ref_values[:k], rtol=1e-10, atol=0)
    assert warm.eigengap is None
    wider = top_eigenpairs(MatrixOperator(h), k, method="lobpcg", init=ref_vectors[:, : k + 1])
    assert wider.iterations == 0 and wider.eigengap == pytest.approx(true_gap, rel=1e-9)


class _RotatedDiagonal:
    """``H = Q diag(lam) Q^T`` in float32 with ``Q`` a product of two Householder reflections: dense eigenvectors,
    an exactly known spectrum (the float64 reference), and O(d) work per product."""

    def __init__(self, lam: torch.Tensor, gen: torch.Generator) -> None:
        self.dim, self.dtype, self.device = int(lam.numel()), torch.float32, torch.device("cpu")
        self.lam = lam.float()
        self.reflections = []
        for _ in range(2):
            u = torch.randn(self.dim, generator=gen, dtype=torch.float64)
            self.reflections.append((u / u.norm()).float())

    def matmat(self, x: torch.Tensor) -> torch.Tensor:
        for u in self.reflections:
            x = x - 2 * u[:, None] * (u @ x)
        x = self.lam[:, None] * x
        for u in reversed(self.reflections):
            x = x - 2 * u[:, None] * (u @ x)
        return x


def _orthogonality_loss(v: torch.Tensor) -> float:
    v = v.double()
    return float((v.T @ v - torch.eye(v.shape[1], dtype=torch.float64)).norm())


def _wide_spectrum(d: int, gen: torch.Generator) -> torch.Tensor:
    """Float64 eigenvalues spanning 1e4: outliers 1e4 .. 1e2 (descending) over a bulk in [0, 1]."""
    outliers = torch.tensor([1e4, 8e3, 5e3, 3e3, 1e3, 5e2, 2e2, 1e2], dtype=torch.float64)
    return torch.cat([outliers, torch.rand(d - 8, generator=gen, dtype=torch.float64)])


def test_svqb_gram_matrix_accumulates_in_float64() -> None:
    # d = 2e4 float32 rows, 16 near-dependent columns. Measured ||Q^T Q - I||_F: 7.7e-6 with a float32 Gram
    # matrix, 9.5e-8 with gram_f64.
    from hf_subspace.eigensolvers._common import svqb

    gen = torch.Generator().manual_seed(0)
    block = torch.randn(20_000, 16, generator=gen, dtype=torch.float64).float()
    block = block * torch.logspace(0, -4, 16).float() + block[:, :1]
    q = svqb(block)
    assert q.dtype == torch.float32 and 1 <= q.shape[1] <= 16
    assert _orthogonality_loss(q) <= 1e-6


def test_lanczos_float32_projections_accumulate_in_float64() -> None:
    # float32 operator, d = 2e4, spectrum spanning 1e4, exactly known (the float64 reference). Measured: Ritz vectors
    # ||V^T V - I||_F 2.0e-5 with float32 projection coefficients and norms, 3.4e-7 with float64 accumulation;
    # largest relative eigenvalue error 2.5e-6 vs 2.4e-7 (tol=1e-5).
    d, k = 20_000, 8
    gen = torch.Generator().manual_seed(0)
    lam = _wide_spectrum(d, gen)
    result = top_eigenpairs(_RotatedDiagonal(lam, gen), k, method="lanczos", tol=1e-5)
    assert result.converged
    assert _orthogonality_loss(result.eigenvectors) <= 1e-6
    rel_err = ((result.eigenvalues.double() - lam[:k]).abs() / lam[:k]).max()
    assert rel_err <= 1e-6


@pytest.mark.parametrize("method", ["lobpcg", "lanczos"])
def test_degenerate_boundary_warns_once_and_separated_does_not(method: str) -> None:
    import warnings

    k = 3
    tied, _, _ = _planted(300, [20.0, 10.0, 5.0, 5.0, 5.0, 1.0], seed=4)  # lambda_3 = lambda_4 = lambda_5
    separated, _, _ = _planted(300, [20.0, 10.0, 5.0, 2.0, 1.0], seed=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clean = top_eigenpairs(MatrixOperator(separated), k, method=method)
    assert clean.converged and clean.eigengap == pytest.approx(3.0, rel=1e-4)
    assert not [w for w in caught if "not separated" in str(w.message)]
    # Lanczos: one start vector spans one direction of a multiple eigenvalue; its final deflated check sees the others.
    with pytest.warns(UserWarning, match=r"top-3 eigenspace is not separated.*lambda_3 - lambda_4") as record:
        result = top_eigenpairs(MatrixOperator(tied), k, method=method)
    assert sum("not separated" in str(w.message) for w in record) == 1
    assert result.converged and result.eigengap is not None and abs(result.eigengap) <= 1e-5
    torch.testing.assert_close(result.eigenvalues, torch.tensor([20.0, 10.0, 5.0], dtype=torch.float64))


class _Diagonal:
    """``diag(lam)`` in float32: the eigenvectors are the unit vectors, so a missed eigenvalue is read off directly
    (a Gaussian start makes Lanczos rotation invariant: a diagonal operator is as hard as a dense one)."""

    def __init__(self, lam: torch.Tensor) -> None:
        self.dim, self.dtype, self.device = int(lam.numel()), torch.float32, torch.device("cpu")
        self.lam = lam.float()

    def matmat(self, x: torch.Tensor) -> torch.Tensor:
        return self.lam[:, None] * x


def _cluster_over_bulk(top: list[float], d: int = 3000) -> torch.Tensor:
    """``top`` (descending) above a bulk in [0, 3], float64."""
    gen = torch.Generator().manual_seed(0)
    bulk = 3.0 * torch.rand(d - len(top), generator=gen, dtype=torch.float64) ** 2
    return torch.cat([torch.tensor(top, dtype=torch.float64), bulk.sort(descending=True).values])


# A tight cluster (spacing 1e-3 relative) inside the top 10: the residual rule relative to max|λ| stopped before its
# third member emerged for 2 of 20 seeds; an exact triple tie: one start vector sees one copy, so it was missed always.
CLUSTERS = {
    "tight": ([100.0, 80.0, 60.0, 40.0, 30.0, 20.0, 15.0, 12.01, 12.0, 11.99], 10),
    "tied": ([100.0, 60.0, 40.0, 20.0, 10.0, 10.0, 10.0], 7),
}


@pytest.mark.parametrize("case", sorted(CLUSTERS))
def test_default_lanczos_never_misses_a_cluster_member(case: str) -> None:
    top, k = CLUSTERS[case]
    lam = _cluster_over_bulk(top)
    for seed in range(20):
        result = top_eigenpairs(_Diagonal(lam), k, seed=seed)
        assert result.converged
        captured = (result.eigenvectors[:k].double() ** 2).sum(dim=1)  # norm of e_i kept in the returned span
        assert float(captured.min()) > 0.99, f"seed {seed}: missed a top-{k} eigenvector ({captured.tolist()})"
        torch.testing.assert_close(result.eigenvalues.double(), lam[:k], rtol=2e-3, atol=0)


def test_lanczos_check_finds_what_the_start_vector_cannot_see() -> None:
    # A start vector with no component along e_3 (lambda_3 = 40): the Krylov space of a diagonal operator never
    # holds e_3, every residual is small and the sweep alone returns lambda_8 in its place. The final check's fresh
    # random vector finds it (this test fails if the check is a no-op).
    top, k = CLUSTERS["tied"]
    lam = _cluster_over_bulk(top, d=500)
    start = torch.ones(500, dtype=torch.float64)
    start[2] = 0.0
    matrix = MatrixOperator(torch.diag(lam))
    alone = top_eigenpairs(matrix, k, init=start[:, None], method="lanczos", verify_steps=0)
    assert alone.converged and float((alone.eigenvectors[2] ** 2).sum()) < 1e-12
    checked = top_eigenpairs(matrix, k, init=start[:, None], method="lanczos")
    assert checked.converged and float((checked.eigenvectors[:k] ** 2).sum(dim=1).min()) > 0.99
    torch.testing.assert_close(checked.eigenvalues, lam[:k])


@pytest.mark.parametrize("basis", [None, 7])
def test_lanczos_locks_in_what_the_check_finds(basis: int | None) -> None:
    # The sweep from a start without e_3 converges to (100, 60, 20, 15, 12) and misses 40. The check finds it; its
    # run continues until 40 converges and locks it in (a few products) instead of a whole new sweep, which the
    # HVP bound below excludes. With 7 basis vectors the check has 2 free columns, too few to converge 40: the
    # solve must then start again and still be right.
    top, k = [100.0, 60.0, 40.0, 20.0, 15.0, 12.0, 11.0], 5
    lam = _cluster_over_bulk(top, d=500)
    start = torch.ones(500, dtype=torch.float64)
    start[2] = 0.0
    matrix = MatrixOperator(torch.diag(lam))
    alone = top_eigenpairs(matrix, k, init=start[:, None], method="lanczos", verify_steps=0, max_basis_vectors=basis)
    assert alone.converged and float(alone.eigenvalues[2]) == pytest.approx(20.0)
    checked = top_eigenpairs(matrix, k, init=start[:, None], method="lanczos", max_basis_vectors=basis)
    assert checked.converged
    torch.testing.assert_close(checked.eigenvalues, lam[:k], rtol=1e-6, atol=0)
    assert float((checked.eigenvectors[:k] ** 2).sum(dim=1).min()) > 1 - 1e-6
    assert (checked.residuals <= 1e-6 * checked.eigenvalues.abs()).all()
    # The gap's lambda_6 side is a Ritz value or Rayleigh quotient, a lower bound: the gap can only be too large.
    assert checked.eigengap is not None and checked.eigengap >= 3.0 * (1 - 1e-6)
    if basis is None:
        assert checked.eigengap == pytest.approx(3.0, rel=1e-3)  # lambda_5 - lambda_6: the dropped 12 counts
        assert checked.num_matvecs <= alone.num_matvecs + 2 * 5 + 3
