"""Certified subspace tracking: the estimator and controller against dense matrices, then the trainer's policy."""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from _reference import dense_hessian, subspace_distance
from _torchrun import torchrun_two
from _trainer_fixtures import base_args, losses
from torch import nn
from transformers import TrainerCallback

from hf_subspace import HessianOperator, SubspaceTrainer, SubspaceTrainingArguments
from hf_subspace.subspace import SubspaceBasis
from hf_subspace.tracking import BasisTracker, projector_distance, residual_bound

WORKERS = Path(__file__).resolve().parent / "distributed"


def _worker() -> Any:
    """``tests/distributed/worker_tracking.py``: the small float64 problem and the two-process run."""
    if str(WORKERS) not in sys.path:
        sys.path.insert(0, str(WORKERS))
    import worker_tracking

    return worker_tracking


def _spectrum(d: int, k: int) -> torch.Tensor:
    """Top k well separated (10 … 5.5), then a bulk in [−0.5, 2]."""
    top = torch.linspace(10.0, 5.5, k, dtype=torch.float64)
    bulk = torch.linspace(2.0, -0.5, d - k, dtype=torch.float64)
    return torch.cat([top, bulk])


def _rotation(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q


def _top(h: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    values, vectors = torch.linalg.eigh(h)
    return values.flip(0), vectors.flip(1)[:, :k]


def _ritz(h: torch.Tensor, v: torch.Tensor) -> tuple[SubspaceBasis, torch.Tensor]:
    """Rayleigh–Ritz on span(v): the Ritz basis and its residual norms [k]."""
    theta, y = torch.linalg.eigh(v.T @ h @ v)
    x = v @ y.flip(1)
    theta = theta.flip(0)
    return SubspaceBasis(x, theta), (h @ x - x * theta).norm(dim=0)


def _perturbed_basis(u: torch.Tensor, size: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(u + size * torch.randn(u.shape, generator=g, dtype=u.dtype))
    return q


# ---------------------------------------------------------------------------------------------- the estimator


@pytest.mark.parametrize("size", [1e-3, 1e-2, 5e-2])
def test_residual_bound_is_an_upper_bound_on_the_distance(size: float) -> None:
    d, k = 40, 4
    h = _rotation(d, 0) @ torch.diag(_spectrum(d, k)) @ _rotation(d, 0).T
    values, u = _top(h, k)
    for seed in range(5):
        basis, residuals = _ritz(h, _perturbed_basis(u, size, seed))
        exact = subspace_distance(basis.vectors, u)
        bound = residual_bound(residuals, basis.eigenvalues, float(values[k]))
        assert exact <= bound * (1 + 1e-9)
        assert bound <= 3.0 * exact  # and not vacuous: within a small factor of the truth


def test_residual_bound_without_gap_is_infinite() -> None:
    assert residual_bound(torch.ones(2), torch.tensor([3.0, 1.0]), 2.0) == math.inf


def test_probe_estimate_is_unbiased_in_the_squared_bound() -> None:
    """E[estimate²] = ‖(I − VVᵀ) H V D⁻¹‖_F² (averaged over probe seeds), and it bounds the distance."""
    d, k = 30, 3
    q = _rotation(d, 1)
    h = q @ torch.diag(_spectrum(d, k)) @ q.T
    values, u = _top(h, k)
    basis, residuals = _ritz(h, _perturbed_basis(u, 0.02, 0))
    tracker = BasisTracker(0.5, 100, probe_vectors=1)
    tracker.observe_refresh(0, None, basis, residuals, float(values[k]))
    exact_bound = residual_bound(residuals, basis.eigenvalues, float(values[k]))
    squares = []
    for step in range(1, 4001):
        block = tracker.probe_block(basis, step)
        squares.append(tracker.observe_probe(step, basis, block, h @ block) ** 2)
    mean = float(torch.tensor(squares).mean())
    assert mean == pytest.approx(exact_bound**2, rel=0.1)
    assert exact_bound >= subspace_distance(basis.vectors, u)


def test_probe_directions_depend_only_on_seed_and_step() -> None:
    basis = SubspaceBasis(torch.eye(6, 2, dtype=torch.float64), torch.tensor([3.0, 2.0], dtype=torch.float64))
    a, b = BasisTracker(0.1, 10, seed=3), BasisTracker(0.1, 10, seed=3)
    for tr in (a, b):
        tr.observe_refresh(0, None, basis, torch.zeros(2), 1.0)
    assert torch.equal(a.probe_block(basis, 7), b.probe_block(basis, 7))
    assert not torch.equal(a.probe_block(basis, 7), a.probe_block(basis, 8))


# ---------------------------------------------------------------------------------------------- the controller


def _identity_basis(d: int, k: int, angle: float = 0.0) -> SubspaceBasis:
    """span(e_1..e_k) with the last column turned by ``angle`` towards e_{k+1}: distance sin(angle)."""
    v = torch.zeros(d, k, dtype=torch.float64)
    v[:k, :k] = torch.eye(k, dtype=torch.float64)
    v[k - 1, k - 1], v[k, k - 1] = math.cos(angle), math.sin(angle)
    return SubspaceBasis(v, torch.linspace(5.0, 3.0, k, dtype=torch.float64))


def test_interval_grows_at_most_twofold_and_respects_the_cap() -> None:
    tracker = BasisTracker(0.05, 20, probes_per_interval=0)
    basis = _identity_basis(10, 3)
    assert tracker.refresh_due(0)
    tracker.observe_refresh(0, None, basis, torch.zeros(3), 1.0)
    assert tracker.interval == 1 and tracker.refresh_due(1) and not tracker.refresh_due(0)
    step, intervals = 0, []
    for _ in range(7):  # no drift at all: 1 → 2 → 4 → … capped at 20
        step += tracker.interval
        tracker.observe_refresh(step, basis, basis, torch.zeros(3), 1.0)
        intervals.append(tracker.interval)
    assert intervals == [2, 4, 8, 16, 20, 20, 20]


def test_interval_follows_the_measured_drift_rate() -> None:
    tol = 0.05
    tracker = BasisTracker(tol, 1000, safety=0.5, probes_per_interval=0)
    tracker.observe_refresh(0, None, _identity_basis(10, 3), torch.zeros(3), 1.0)
    tracker.interval = 64  # as if it had grown already
    tracker.drift_rate = None
    # drift 0.05 over 64 steps: rate 7.8e-4/step → the next interval aims at 0.025: 32 steps
    tracker.observe_refresh(64, _identity_basis(10, 3), _identity_basis(10, 3, math.asin(0.05)), torch.zeros(3), 1.0)
    assert tracker.interval == 32
    assert tracker.predicted_error(64 + 32) == pytest.approx(0.025, rel=0.05)
    # a sudden fast drift shrinks the interval at once (no lower bound on shrinking)
    tracker.observe_refresh(70, _identity_basis(10, 3), _identity_basis(10, 3, math.asin(0.2)), torch.zeros(3), 1.0)
    assert tracker.interval == 1


def test_probe_above_threshold_forces_a_refresh_now() -> None:
    d, k = 20, 3
    tracker = BasisTracker(0.05, 100, probe_threshold=0.5, probes_per_interval=4)
    h = torch.diag(_spectrum(d, k))
    basis = _identity_basis(d, k)
    tracker.observe_refresh(0, None, basis, torch.zeros(k), float(_spectrum(d, k)[k]))
    tracker.interval = 40
    assert tracker.probe_every() == 10 and tracker.probe_due(10) and not tracker.probe_due(11)
    block = tracker.probe_block(basis, 10)
    assert tracker.observe_probe(10, basis, block, h @ block) == pytest.approx(0.0, abs=1e-12)
    assert not tracker.refresh_due(10)
    # H now couples e_k and e_{k+1} strongly: the basis is off, the probe says so
    h2 = h.clone()
    h2[k - 1, k] = h2[k, k - 1] = 1.0
    block = tracker.probe_block(basis, 20)
    estimate = tracker.observe_probe(20, basis, block, h2 @ block)
    _, u = _top(h2, k)
    assert estimate > 0.025
    assert subspace_distance(basis.vectors, u) > 0.05
    assert tracker.refresh_due(20) and tracker.error_estimate(20) == estimate
    tracker.observe_refresh(20, basis, basis, torch.zeros(k), float(_spectrum(d, k)[k]))
    assert tracker.num_probe_refreshes == 1 and not tracker.force_refresh


def test_solver_tol_follows_the_basis_tolerance() -> None:
    tracker = BasisTracker(0.05, 10)
    assert tracker.solver_tol(1e-3) == 1e-3  # nothing known yet
    basis = SubspaceBasis(torch.eye(8, 2, dtype=torch.float64), torch.tensor([10.0, 3.0], dtype=torch.float64))
    tracker.observe_refresh(0, None, basis, torch.zeros(2), 1.0)
    # 0.2 · 0.05 / (10 · ‖[1/9, 1/2]‖) = 1.95e-3 → clipped to the default
    assert tracker.solver_tol(1e-3) == 1e-3
    tracker.tol = 0.005
    assert tracker.solver_tol(1e-3) == pytest.approx(0.2 * 0.005 / (10 * math.hypot(1 / 9, 1 / 2)))


def _rotating_hessian(d: int, k: int, step: int, speed: float) -> torch.Tensor:
    """H(t) = Q(t) Λ Q(t)ᵀ, Q(t) = exp(t · speed · A) with A skew-symmetric: the eigenspace turns steadily."""
    g = torch.Generator().manual_seed(5)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    a = (a - a.T) / math.sqrt(d)
    q = torch.linalg.matrix_exp(step * speed * a) @ _rotation(d, 2)
    return q @ torch.diag(_spectrum(d, k)) @ q.T


@pytest.mark.parametrize(("speed", "fraction"), [(2e-4, 0.1), (2e-3, 0.4)])
def test_tracking_keeps_the_error_within_tol_with_few_refreshes(speed: float, fraction: float) -> None:
    """A steadily turning dense Hessian, exact refreshes: error ≤ tol at every step, far fewer refreshes than steps."""
    d, k, tol, steps = 24, 3, 0.05, 300
    tracker = BasisTracker(tol, 200)
    basis: SubspaceBasis | None = None
    worst, products = 0.0, 0
    for step in range(steps):
        h = _rotating_hessian(d, k, step, speed)
        values, u = _top(h, k)
        if not tracker.refresh_due(step) and tracker.probe_due(step):
            assert basis is not None
            block = tracker.probe_block(basis, step)
            tracker.observe_probe(step, basis, block, h @ block)
            products += block.shape[1]
        if tracker.refresh_due(step):
            new, residuals = _ritz(h, u)
            tracker.observe_refresh(step, basis, new, residuals, float(values[k]))
            basis, products = new, products + 2 * k
        assert basis is not None
        worst = max(worst, subspace_distance(basis.vectors, u))
    assert worst <= tol
    # products of refreshing every step: 2k per step
    assert products < fraction * steps * 2 * k, (tracker, products)


def test_state_dict_round_trip_gives_identical_decisions() -> None:
    d, k = 16, 2
    h = _rotating_hessian(d, k, 0, 0.0)
    values, u = _top(h, k)
    basis, residuals = _ritz(h, u)
    a = BasisTracker(0.05, 50, seed=1)
    a.observe_refresh(3, None, basis, residuals, float(values[k]))
    a.observe_refresh(4, basis, basis, residuals, float(values[k]))
    b = BasisTracker(0.05, 50, seed=1)
    b.load_state_dict(a.state_dict())
    assert b.state_dict().keys() == a.state_dict().keys()
    for step in range(4, 30):
        assert (a.refresh_due(step), a.probe_due(step)) == (b.refresh_due(step), b.probe_due(step))
    assert torch.equal(a.probe_block(basis, 9), b.probe_block(basis, 9))
    with pytest.raises(KeyError, match="unknown"):
        b.load_state_dict({"nonsense": 1})


@pytest.mark.parametrize("tol", [0.0, -0.1, 1.0, 2.0])
def test_bad_tolerance_is_refused(tol: float) -> None:
    with pytest.raises(ValueError, match="tol"):
        BasisTracker(tol, 10)


def test_projector_distance_resolves_small_angles_in_float32() -> None:
    """d = 2·10⁵, float32: an angle of 1e-3 is measured to 1e-5 (√(1 − σ²) of a float32 product cannot)."""
    d, k, angle = 200_000, 4, 1e-3
    g = torch.Generator().manual_seed(0)
    a, _ = torch.linalg.qr(torch.randn(d, k + 1, generator=g, dtype=torch.float64))
    b = a[:, :k].clone()
    b[:, -1] = math.cos(angle) * a[:, k - 1] + math.sin(angle) * a[:, k]
    exact = projector_distance(a[:, :k], b)
    assert exact == pytest.approx(math.sin(angle), rel=1e-9)
    assert projector_distance(a[:, :k].float(), b.float()) == pytest.approx(math.sin(angle), abs=1e-5)
    assert projector_distance(SubspaceBasis(b.float()), SubspaceBasis(b.float())) < 1e-5
    with pytest.raises(ValueError, match="shape"):
        projector_distance(a, b)


# ---------------------------------------------------------------------------------------------- in the trainer


def _tracked_trainer(out: Path, model: nn.Module | None = None, **overrides: Any) -> SubspaceTrainer:
    return _worker().tracked_trainer(str(out), model, **overrides)


class _DenseChecker(TrainerCallback):
    """After the subspace callback: distance of the basis in use to the dense top-k eigenspace at θ_t."""

    def __init__(self, trainer: SubspaceTrainer) -> None:
        self.trainer = trainer
        op = trainer.hessian_operator
        self.reference = HessianOperator(trainer.model, op.batches, params=trainer.subspace_params)
        self.distances: list[float] = []

    def dense(self) -> torch.Tensor:
        return self.reference.matmat(torch.eye(self.reference.dim, dtype=torch.float64))

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        basis = self.trainer.subspace_basis
        assert basis is not None
        _, vectors = torch.linalg.eigh(self.dense())
        self.distances.append(subspace_distance(basis.vectors, vectors.flip(1)[:, : basis.k]))


def test_bulk_run_keeps_the_basis_within_tol_with_fewer_hvps(tmp_path) -> None:
    trainer = _tracked_trainer(tmp_path / "tracked")
    assert trainer.subspace_basis is None
    checker = _DenseChecker(trainer)
    # the reference operator is the dense Hessian (torch.func) at the start
    assert torch.allclose(checker.dense(), dense_hessian(trainer.model, trainer.hessian_operator.batches), atol=1e-10)
    trainer.add_callback(checker)
    trainer.train()
    assert len(checker.distances) == 150
    assert max(checker.distances) <= 0.05 + 1e-5, max(checker.distances)
    st = trainer.subspace_state
    assert st.tracker is not None and 2 < st.tracker.num_refreshes < 150
    tracked = st.hvps_total
    assert tracked == trainer.hessian_operator.num_matvecs
    logs = [h for h in trainer.state.log_history if "subspace/hvps_total" in h]
    assert logs and logs[-1]["subspace/hvps_total"] == tracked
    assert any("subspace/basis_error_estimate" in h for h in logs)
    assert any("subspace/refresh_interval" in h for h in logs)

    # Refreshing every step costs the same every step: 50 steps of it, times 3, stand for the 150.
    every = _tracked_trainer(tmp_path / "every", subspace_basis_tol=None, subspace_refresh_steps=1, max_steps=50)
    every.train()
    assert every.subspace_state.hvps_total == every.hessian_operator.num_matvecs
    assert tracked < 0.75 * 3 * every.subspace_state.hvps_total, (tracked, every.subspace_state.hvps_total)


def test_resume_with_tracking_continues_exactly(tmp_path) -> None:
    overrides = {"max_steps": 40, "save_strategy": "steps", "save_steps": 20, "logging_steps": 1}
    full = _tracked_trainer(tmp_path / "full", **overrides)
    full.train()
    resumed = _tracked_trainer(tmp_path / "resumed", **overrides)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-20"))
    expected = losses(full.state.log_history)
    got = {step: loss for step, loss in losses(resumed.state.log_history).items() if step > 20}
    assert sorted(got) == list(range(21, 41))
    for step in got:
        assert got[step] == pytest.approx(expected[step], rel=1e-6)
    a, b = full.subspace_state, resumed.subspace_state
    assert b.hvps_total == a.hvps_total  # the count continues from the checkpoint
    assert b.hvps_total > resumed.hessian_operator.num_matvecs  # ... which this process did not all compute
    assert a.tracker is not None and b.tracker is not None
    assert b.tracker.state_dict().keys() == a.tracker.state_dict().keys()
    assert (b.tracker.num_refreshes, b.tracker.num_probes) == (a.tracker.num_refreshes, a.tracker.num_probes)
    assert torch.allclose(b.basis.vectors, a.basis.vectors)


@pytest.mark.parametrize("tol", [0.0, -0.05, 1.0, 1.5, float("nan")])
def test_bad_basis_tol_is_refused_before_training(tmp_path, tol: float) -> None:
    with pytest.raises(ValueError, match="subspace_basis_tol"):
        SubspaceTrainingArguments(**base_args(str(tmp_path), subspace_basis_tol=tol))


@pytest.mark.distributed
def test_two_processes_take_the_same_tracking_decisions_as_one(tmp_path) -> None:
    """torchrun, gloo: ranks agree exactly; one process on the whole batch takes the same decisions."""
    torchrun_two([str(WORKERS / "worker_tracking.py"), str(tmp_path)], {"OMP_NUM_THREADS": "1"})
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0 == r1
    worker = _worker()
    single = worker.tracked_trainer(str(tmp_path / "single"), per_device_train_batch_size=50, **worker.PARITY)
    single.train()
    one = worker.record(single)
    for key in ("hvps_total", "refreshes", "probes", "last_refresh_step"):
        assert r0[key] == one[key], key
    assert set(r0["losses"]) == set(one["losses"])
    for step, value in one["losses"].items():
        assert r0["losses"][step] == pytest.approx(value, rel=1e-6), step
    assert r0["estimates"] == pytest.approx(one["estimates"], rel=1e-6)


def test_measurements_without_projection_use_the_tracker(tmp_path) -> None:
    """mode "none": a measurement between the tracker's refreshes probes the basis (that pass also gives the loss and
    gradient the measurement reuses) instead of refreshing; χ_k agrees with a basis refreshed at every measurement
    to within the distance bound, |χ(V₁) − χ(V₂)| ≤ ‖P₁ − P₂‖₂ ≤ tol."""
    settings = {
        "subspace_mode": "none",
        "subspace_alignment_steps": 1,
        "max_steps": 20,
        "logging_steps": 5,
    }
    start = _worker().pretrained_model()
    tracked = _tracked_trainer(tmp_path / "tracked", copy.deepcopy(start), **settings)
    tracked.train()
    fresh = _tracked_trainer(tmp_path / "fresh", copy.deepcopy(start), subspace_basis_tol=None, **settings)
    fresh.train()

    def chi(trainer: SubspaceTrainer) -> dict[int, float]:
        history = trainer.state.log_history
        return {h["step"]: h["subspace/chi_k_full_grad"] for h in history if "subspace/chi_k_full_grad" in h}

    a, b = chi(tracked), chi(fresh)
    assert sorted(a) == sorted(b) and len(a) == 21
    for step in a:
        assert a[step] == pytest.approx(b[step], abs=0.05 + 1e-6)
    st = tracked.subspace_state
    assert st.hvps_total == tracked.hessian_operator.num_matvecs
    assert st.tracker is not None and st.tracker.num_probes > 0, st.tracker


def test_offset_is_learned_from_two_interval_lengths() -> None:
    """A basis that jumps to 0.02 one step after a refresh and then grows by 1e-3 per step (the jitter measured along
    Dom-SGD): a linear model would refresh every step (0.02 / step); the envelope fit learns the offset."""
    tol = 0.05
    tracker = BasisTracker(tol, 1000, safety=0.8, probes_per_interval=0)
    tracker.observe_refresh(0, None, _identity_basis(10, 3), torch.zeros(3), 1.0)
    step, intervals = 0, []
    for _ in range(8):
        interval = tracker.interval
        step += interval
        drift = 0.02 + 1e-3 * interval
        tracker.observe_refresh(
            step, _identity_basis(10, 3), _identity_basis(10, 3, math.asin(drift)), torch.zeros(3), 1.0
        )
        intervals.append(tracker.interval)
    # (0.8 · 0.05 − 0.02) / 1e-3 = 20 steps once the offset is known; never an interval whose error would pass 0.04
    assert intervals[-1] == 20, intervals
    assert tracker.drift_offset == pytest.approx(0.02, abs=1e-9) and tracker.drift_rate == pytest.approx(1e-3)
    assert all(0.02 + 1e-3 * t <= 0.8 * tol + 1e-12 for t in intervals)


def test_probe_is_calibrated_by_the_drift_measured_after_it() -> None:
    d, k = 20, 3
    tracker = BasisTracker(0.05, 100, probes_per_interval=4)
    spectrum = _spectrum(d, k)
    basis = _identity_basis(d, k)
    tracker.observe_refresh(0, None, basis, torch.zeros(k), float(spectrum[k]))
    tracker.interval = 40
    h2 = torch.diag(spectrum)
    h2[k - 1, k] = h2[k, k - 1] = 0.2  # the basis is slightly off
    block = tracker.probe_block(basis, 10)
    raw = tracker.observe_probe(10, basis, block, h2 @ block)
    assert tracker.probe_calibration() == 1.0  # nothing measured yet: the raw estimate
    _, u = _top(h2, k)
    new = SubspaceBasis(u, spectrum[:k])
    drift = subspace_distance(basis.vectors, u)
    tracker.observe_refresh(20, basis, new, torch.zeros(k), float(spectrum[k]))
    assert tracker.probe_ratios == [pytest.approx(raw / drift, rel=1e-6)]
    block = tracker.probe_block(basis, 25)
    again = tracker.observe_probe(25, basis, block, h2 @ block)
    raw_again = tracker.last_probe_raw
    assert raw_again is not None and again == pytest.approx(raw_again / (raw / drift), rel=1e-6)


def test_refresh_bound_is_calibrated_like_a_probe() -> None:
    """The refresh's own bound ‖R D⁻¹‖_F reads high by the factor the probes measured: the prediction (and so the
    interval) uses it divided by the probe calibration, and only once an interval has had a probe."""
    tol = 0.05
    tracker = BasisTracker(tol, 1000, safety=0.8, probes_per_interval=0)
    residuals = torch.full(
        (3,), 0.02 / math.sqrt(3.0), dtype=torch.float64
    )  # unit gaps (ϑ = 2, λ_{k+1} = 1): bound 0.02
    basis = SubspaceBasis(_identity_basis(10, 3).vectors, torch.full((3,), 2.0))
    tracker.observe_refresh(0, None, basis, residuals, 1.0)
    assert tracker.refresh_bound == pytest.approx(0.02)
    assert tracker.predicted_error(1) == pytest.approx(0.02)  # no calibration yet: the raw bound, offset 0, rate 0
    tracker.probe_ratios = [4.0, 4.0, 4.0]
    tracker.drift_offset, tracker.drift_rate = 0.01, 1e-3
    assert tracker.calibrated_refresh_bound() == pytest.approx(0.005)
    assert tracker.predicted_error(5) == pytest.approx(0.005 + 0.01 + 5e-3)
    # planning: (0.8 · 0.05 − 0.005 − offset) / rate with the fit of one (T, δ) pair per length
    # planning after a refresh at age 8 with drift 0.018, following one at age 4 with 0.014: the fit is offset 0.01,
    # rate 1e-3, and the next interval (0.8 · 0.05 − 0.005 − 0.01) / 1e-3 = 25 steps, capped by growth 2 × 8 = 16
    # (uncalibrated it would be 10).
    for growth, expected in ((2.0, 16), (100.0, 25)):  # 25, not 24 from rounding
        planned = BasisTracker(tol, 1000, safety=0.8, probes_per_interval=0, growth=growth)
        planned.observe_refresh(0, None, basis, residuals, 1.0)
        planned.probe_ratios = [4.0, 4.0, 4.0]
        for step, drift in ((4, 0.014), (12, 0.018)):
            new = SubspaceBasis(_identity_basis(10, 3, math.asin(drift)).vectors, torch.full((3,), 2.0))
            planned.observe_refresh(step, basis, new, residuals, 1.0)
        assert planned.drift_offset == pytest.approx(0.01) and planned.drift_rate == pytest.approx(1e-3)
        assert planned.interval == expected


# ------------------------------------------------------------------------------ the tolerance at every step


class _SmallMLP(nn.Module):
    """8-24-3 tanh MLP (d = 291), ½·Σ MSE to one-hot targets, in float32 or float64."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 24, dtype=dtype)
        self.fc2 = nn.Linear(24, 3, dtype=dtype)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        logits = self.fc2(torch.tanh(self.fc1(x.to(self.fc1.weight.dtype))))
        out: dict[str, Any] = {"logits": logits}
        if labels is not None:
            out["loss"] = 0.5 * ((logits - nn.functional.one_hot(labels, 3).to(logits.dtype)) ** 2).sum(-1).mean()
        return out


class _EveryStep(TrainerCallback):
    """After the subspace callback: (step, distance of the basis in use to the dense top-k eigenspace, its refresh)."""

    def __init__(self, trainer: SubspaceTrainer) -> None:
        self.trainer = trainer
        self.rows: list[tuple[int, float, int]] = []

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        basis, st = self.trainer.subspace_basis, self.trainer.subspace_state
        assert basis is not None and st.last_refresh_step is not None
        h = dense_hessian(self.trainer.model, self.trainer.hessian_operator.batches).double()
        exact = torch.linalg.eigh(h)[1].flip(1)[:, : basis.k]
        self.rows.append((state.global_step, subspace_distance(basis.vectors.double(), exact), st.last_refresh_step))


@pytest.mark.parametrize(
    ("dtype", "seed", "lr", "k"),
    [
        (torch.float32, 0, 0.1, 2),
        (torch.float32, 0, 0.3, 3),
        (torch.float32, 2, 0.1, 2),
        (torch.float32, 2, 0.3, 3),
        (torch.float64, 0, 0.1, 2),
        (torch.float64, 0, 0.1, 3),
    ],
    ids=[
        "f32-s0-lr0.1-k2",
        "f32-s0-lr0.3-k3",
        "f32-s2-lr0.1-k2",
        "f32-s2-lr0.3-k3",
        "f64-s0-lr0.1-k2",
        "f64-s0-lr0.1-k3",
    ],
)
def test_tolerance_holds_at_every_step_or_the_step_is_flagged(tmp_path, dtype, seed: int, lr: float, k: int) -> None:
    """Along Bulk-SGD on a d = 291 MLP, the basis in use is within tol of the dense Hessian's exact top-k eigenspace
    at every step, unless its refresh logged subspace/tolerance_unreachable."""
    tol = 0.05
    torch.manual_seed(seed)
    settings = {**TRACKED_SMALL, "learning_rate": lr, "subspace_k": k, "seed": seed, "data_seed": seed}
    args = SubspaceTrainingArguments(**base_args(str(tmp_path), **settings))
    data = _worker().blobs_dataset()
    trainer = SubspaceTrainer(model=_SmallMLP(dtype), args=args, train_dataset=data)
    checker = _EveryStep(trainer)
    trainer.add_callback(checker)
    trainer.train()
    history = trainer.state.log_history
    flagged = {h["step"] - 1 for h in history if "subspace/tolerance_unreachable" in h}
    assert len(checker.rows) == settings["max_steps"]
    over = [(step, d) for step, d, refreshed in checker.rows if d > tol + 1e-5 and refreshed not in flagged]
    assert not over, over


TRACKED_SMALL = {
    "subspace_mode": "bulk",
    "subspace_start_step": 0,
    "subspace_refresh_steps": 50,
    "subspace_basis_tol": 0.05,
    "subspace_alignment_steps": 0,
    "max_steps": 14,
    "per_device_train_batch_size": 25,
    "logging_steps": 1,
    "hessian_num_samples": 200,
}


def test_a_tolerance_that_cannot_be_certified_is_flagged(tmp_path, caplog) -> None:
    """No gap at λ_k (a degenerate boundary): the refresh says so, with a warning and a logged flag."""
    d, k = 12, 2
    values = torch.tensor([5.0, 3.0, 3.0] + [1.0] * (d - 3), dtype=torch.float64)
    basis = SubspaceBasis(torch.eye(d, dtype=torch.float64)[:, :k], values[:k])
    tracker = BasisTracker(0.05, 10)
    out = tracker.observe_refresh(0, None, basis, torch.zeros(k, dtype=torch.float64), float(values[k]))
    assert out["tolerance_unreachable"] == 1.0
    wide = tracker.observe_refresh(1, basis, basis, torch.full((k,), 1e-6, dtype=torch.float64), 1.0)
    assert "tolerance_unreachable" not in wide
    loose = tracker.observe_refresh(2, basis, basis, torch.full((k,), 0.5, dtype=torch.float64), 1.0)
    assert loose["tolerance_unreachable"] == 1.0  # the refresh's own bound is above tol


def test_the_trainer_warns_and_logs_when_the_tolerance_cannot_be_certified(tmp_path, caplog) -> None:
    """A tolerance below what the float32 solver reaches: the steps are flagged in the log, one warning says why."""
    import logging

    overrides = {**TRACKED_SMALL, "max_steps": 4, "subspace_basis_tol": 1e-6, "subspace_solver_tol": 1e-2}
    args = SubspaceTrainingArguments(**base_args(str(tmp_path), **overrides))
    torch.manual_seed(0)
    trainer = SubspaceTrainer(model=_SmallMLP(torch.float32), args=args, train_dataset=_worker().blobs_dataset())
    with caplog.at_level(logging.WARNING, logger="hf_subspace.callback"):
        trainer.train()
    flags = [h for h in trainer.state.log_history if "subspace/tolerance_unreachable" in h]
    assert len(flags) == 4  # a refresh at every step, each flagged
    warnings = [r.getMessage() for r in caplog.records if "cannot be certified" in r.getMessage()]
    assert len(warnings) == 1 and "subspace_basis_tol=1e-06" in warnings[0]


def test_a_longer_interval_is_tried_only_when_the_fit_keeps_it_within_tol() -> None:
    """Drift 0.03 after one step (within 0.8 · tol): two steps would be predicted at 0.06 > tol, so the interval
    stays 1; drift 0.02 predicts 0.04 for two steps, which is tried (a second length tells offset from rate)."""
    for drift, expected in ((0.03, 1), (0.02, 2)):
        tracker = BasisTracker(0.05, 100, probes_per_interval=0)
        tracker.observe_refresh(0, None, _identity_basis(10, 3), torch.zeros(3), 1.0)
        tracker.observe_refresh(
            1, _identity_basis(10, 3), _identity_basis(10, 3, math.asin(drift)), torch.zeros(3), 1.0
        )
        assert tracker.interval == expected, drift


def test_short_intervals_get_a_probe() -> None:
    """A 2-step interval is probed at its second step (the one step the basis is used unrefreshed)."""
    d, k = 20, 3
    tracker = BasisTracker(0.05, 100, probes_per_interval=4)
    tracker.observe_refresh(0, None, _identity_basis(d, k), torch.zeros(k), float(_spectrum(d, k)[k]))
    tracker.interval = 2
    assert tracker.probe_due(1) and not tracker.refresh_due(1)
    assert tracker.refresh_due(2)
