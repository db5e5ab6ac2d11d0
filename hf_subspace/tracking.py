r"""Certified subspace tracking: when must the dominant basis be recomputed?

The paper recomputes the top-k eigenvectors of the Hessian at every step. :class:`BasisTracker` keeps the basis in use
within a tolerance ``tol`` of the exact top-k eigenspace instead, measured as the spectral distance of the projectors

.. math::

    \varepsilon_t = \lVert P_{\mathrm{used}} - P_{\mathrm{exact}}(\theta_t) \rVert_2
    = \sin \angle_{\max}\big(\operatorname{span} V, \operatorname{span} U_k(\theta_t)\big),

and asks for a refresh only when an estimate of :math:`\varepsilon_t` would exceed it. Two estimates, both cheap:

**Residual bound** (Davis–Kahan). For the basis :math:`V` [d, k] in use with Ritz values :math:`\vartheta_i` (from
its last refresh) and :math:`\lambda_{k+1}` the next eigenvalue below the block, let
:math:`R = (I - VV^\top) H V` and :math:`D = \operatorname{diag}(\vartheta_i - \lambda_{k+1})`. With
:math:`X = U_\perp^\top V`, :math:`\lVert X \rVert_2 = \varepsilon_t`, the Sylvester relation
:math:`X\Theta - \Lambda_\perp X = -U_\perp^\top R` gives column by column
:math:`\lVert X e_i \rVert \le \lVert R e_i \rVert / (\vartheta_i - \lambda_{k+1})` while :math:`V^\top H V` stays
close to diagonal, hence

.. math::

    \varepsilon_t \le \lVert X \rVert_F \le \lVert R D^{-1} \rVert_F =: \beta_t .

At a refresh :math:`\beta` is exact (the solver's residuals are the columns of :math:`R`). Between refreshes a
*probe* estimates it from ``p`` Hessian-vector products in one pass: with :math:`\Omega \in \mathbb{R}^{k \times p}`
standard Gaussian, :math:`\mathbb{E} \lVert (I - VV^\top) H V D^{-1} \Omega \rVert_F^2 = p \, \beta_t^2`. The
estimate is unbiased in :math:`\beta^2` but has the variance of a :math:`\chi^2_p / p` variable when one direction
dominates, and it reads above the distance (:math:`\lVert X \rVert_F` and the column-wise gaps against
:math:`\lVert X \rVert_2`); a probe above ``probe_threshold · tol`` (default 1) triggers a refresh.

**Drift controller**. After each refresh the distance between the old and the new basis,
:math:`\delta = \lVert P_{\mathrm{old}} - P_{\mathrm{new}} \rVert_2`, is the error the old basis had reached at the
end of its interval :math:`T` (up to the new refresh's own error). That error is not proportional to the age of the
basis: one step after a refresh it jumps to an *offset* (the exact top-k eigenspace jitters from minibatch to
minibatch), then grows slowly. The controller therefore fits

.. math::

    \hat\varepsilon(T) = \beta_{\mathrm{refresh}} / c + a + e + b\,T, \qquad a, b \ge 0,

(:math:`c` the probe calibration below: the refresh's bound is the same estimator as a probe, computed from the
solver's residuals, and reads high by the same factor) to the last ``window`` pairs :math:`(T_j, \delta_j)` by least
squares, with :math:`e = \max_j (\delta_j - a - bT_j)^+`
lifting the line over every observation (an upper envelope, so no measured interval is under-predicted). With only
one interval length observed it assumes :math:`\hat\varepsilon(T) = \delta T_j^{-1} T` (no offset: the conservative
extrapolation). The next interval is the largest :math:`T` with :math:`\hat\varepsilon(T) \le \mathrm{safety} \cdot
\mathrm{tol}`; while only one interval length has been seen, at least one step longer than the last when its
measured :math:`\delta` was within that target and the fitted line keeps the longer one within ``tol`` (so a second
length tells offset from rate without exceeding ``tol``). It grows at most
``growth``-fold per refresh and is capped at ``max_interval``.

**Probe calibration**. The residual estimate reads high. The last probe :math:`\hat\beta_s` of an interval and the
distance :math:`\delta` measured at its end (:math:`\ge` the error at step ``s`` while the error grows with age) give a
ratio :math:`c = \hat\beta_s / \delta` that *under*-states the over-reading; probes are divided by the median ratio of
the last ``window`` intervals, clipped to [0.25, 4] (one probe can read far above its typical over-reading, and a
divisor learnt from it would hide a real error).

Probes run every ``max(1, interval // probes_per_interval)`` steps inside an interval; a probe whose estimate exceeds
``probe_threshold · tol`` triggers a refresh at that very step, so the basis used for the update is fresh. Every
decision depends only on all-reduced products and on generators seeded by ``(seed, step)``, so all ranks agree and
a resumed run (:meth:`BasisTracker.state_dict`) takes the same decisions as an uninterrupted one.

Where ``tol`` cannot be certified (no gap between λ_k and λ_{k+1}, or a refresh whose own bound exceeds ``tol``)
:meth:`BasisTracker.observe_refresh` says so (``tolerance_unreachable``) instead of passing silently. Measurements of
cost and accuracy along real trajectories are in ``docs/performance.md`` ("Certified tracking").

Both :class:`BasisTracker` and :class:`FixedInterval` (``subspace_refresh_steps`` without a tolerance) implement
:class:`RefreshSchedule`, the one interface :class:`~hf_subspace.callback.SubspaceCallback` asks each step.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch

from .subspace import SubspaceBasis, projector_distance

if TYPE_CHECKING:
    from .training_args import SubspaceTrainingArguments

__all__ = [
    "Action",
    "BasisTracker",
    "FixedInterval",
    "RefreshSchedule",
    "projector_distance",
    "refresh_schedule",
    "residual_bound",
]

#: What a schedule asks for at a step: recompute the basis, probe its error (then ask again), or nothing.
Action = Literal["refresh", "probe"] | None

#: Largest divisor of a probe: the over-reading measured along MNIST trajectories reached 3.8x (90th percentile).
_MAX_CALIBRATION = 4.0


def residual_bound(residuals: torch.Tensor, ritz_values: torch.Tensor, next_eigenvalue: float) -> float:
    r"""Davis–Kahan estimate :math:`\lVert R D^{-1} \rVert_F` of the distance to the exact top-k eigenspace.

    Args:
        residuals: ``[k]`` residual norms :math:`\lVert H v_i - \vartheta_i v_i \rVert` of the Ritz pairs, or a
            ``[d, k]`` block of residual vectors (whose column norms are taken).
        ritz_values: ``[k]`` Ritz values :math:`\vartheta_i` belonging to the columns.
        next_eigenvalue: :math:`\lambda_{k+1}`.

    Returns:
        :math:`\sqrt{\sum_i \lVert r_i \rVert^2 / (\vartheta_i - \lambda_{k+1})^2}`; ``inf`` when a Ritz value does not
        lie above :math:`\lambda_{k+1}` (no gap: the top-k eigenspace is not determined).
    """
    norms = residuals.norm(dim=0) if residuals.dim() == 2 else residuals.abs()
    gaps = ritz_values.to(torch.float64).cpu() - float(next_eigenvalue)
    if bool((gaps <= 0).any()):
        return math.inf
    return float(torch.linalg.vector_norm(norms.to(torch.float64).cpu() / gaps).item())


def _envelope_fit(samples: list[tuple[int, float]]) -> tuple[float, float]:
    r"""Offset and rate ``(a + e, b)`` of the envelope :math:`\delta \le a + e + bT` over ``(T, δ)`` samples.

    Least squares with :math:`a, b \ge 0` (a clipped intercept refits :math:`b` through the origin), lifted by the
    largest positive residual. With one distinct ``T``: offset 0 and the steepest :math:`\delta / T` (no offset can be
    told apart from a rate).
    """
    ts = torch.tensor([float(t) for t, _ in samples], dtype=torch.float64)
    ds = torch.tensor([float(d) for _, d in samples], dtype=torch.float64)
    if int(torch.unique(ts).numel()) < 2:
        return 0.0, float((ds / ts).max().item())
    tc, dc = ts - ts.mean(), ds - ds.mean()
    b = max(0.0, float((tc * dc).sum() / (tc * tc).sum()))
    a = float(ds.mean()) - b * float(ts.mean())
    if a < 0.0:
        a, b = 0.0, max(0.0, float((ts * ds).sum() / (ts * ts).sum()))
    e = max(0.0, float((ds - a - b * ts).max()))
    return a + e, b


class RefreshSchedule(Protocol):
    """When the dominant basis is recomputed, and how; the callback asks it once per step (twice after a probe).

    ``last_refresh_step`` is the step whose parameters the basis in use belongs to (None: no basis); setting it to
    None makes the next step that needs a basis refresh it. :meth:`state_dict` is what a checkpoint keeps.
    """

    last_refresh_step: int | None

    def due(self, step: int, *, projecting: bool, measure: bool) -> Action:
        """What to do before the basis is used at ``step`` (to project an update, or to measure alignment)."""
        ...

    def num_eigenpairs(self, k: int, extra: int) -> int:
        """Eigenpairs a refresh solves for, given ``subspace_k`` and ``subspace_extra_eigenvalues``."""
        ...

    def refresh_tol(self, requested: float | None, dtype: torch.dtype) -> float | None:
        """The solver's tolerance for the next refresh (``requested``: ``subspace_solver_tol``; None: its default)."""
        ...

    def observe_probe(self, step: int, basis: SubspaceBasis, block: torch.Tensor, products: torch.Tensor) -> float:
        """Record a probe (``products = H @ block``, ``block`` from :meth:`BasisTracker.probe_block`); its estimate."""
        ...

    def observe_refresh(
        self,
        step: int,
        old: SubspaceBasis | None,
        new: SubspaceBasis,
        residuals: torch.Tensor,
        next_eigenvalue: float | None,
    ) -> dict[str, float]:
        """Record a refresh at ``step``; returns the metrics to log with it."""
        ...

    def reset(self) -> None:
        """Forget everything tied to step numbers (a new run restarts the step counter)."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class FixedInterval:
    """The paper's schedule: a refresh every ``every`` steps while projecting, and before each measurement outside
    projection (so χ_k is measured against the basis at the measured parameters).

    Args:
        every: ``subspace_refresh_steps``, ``>= 1``.
    """

    def __init__(self, every: int) -> None:
        if every < 1:
            raise ValueError(f"every={every} must be >= 1 (subspace_refresh_steps).")
        self.every = int(every)
        self.last_refresh_step: int | None = None

    def due(self, step: int, *, projecting: bool, measure: bool) -> Action:
        last = self.last_refresh_step
        if not (measure or projecting) or last == step:
            return None
        if last is not None and projecting and step - last < self.every:
            return None
        return "refresh"

    def num_eigenpairs(self, k: int, extra: int) -> int:
        return k + extra

    def refresh_tol(self, requested: float | None, dtype: torch.dtype) -> float | None:
        return requested

    def observe_probe(self, step: int, basis: SubspaceBasis, block: torch.Tensor, products: torch.Tensor) -> float:
        raise RuntimeError("FixedInterval never asks for a probe.")

    def observe_refresh(
        self,
        step: int,
        old: SubspaceBasis | None,
        new: SubspaceBasis,
        residuals: torch.Tensor,
        next_eigenvalue: float | None,
    ) -> dict[str, float]:
        self.last_refresh_step = int(step)
        return {}

    def reset(self) -> None:
        self.last_refresh_step = None

    def state_dict(self) -> dict[str, Any]:
        return {"last_refresh_step": self.last_refresh_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_refresh_step = state.get("last_refresh_step")

    def __repr__(self) -> str:
        return f"FixedInterval(every={self.every}, last_refresh_step={self.last_refresh_step})"


def refresh_schedule(args: SubspaceTrainingArguments) -> RefreshSchedule:
    """The schedule the arguments ask for: :class:`BasisTracker` with ``subspace_basis_tol``, else
    :class:`FixedInterval` every ``subspace_refresh_steps``."""
    if args.subspace_basis_tol is None:
        return FixedInterval(args.subspace_refresh_steps)
    return BasisTracker(args.subspace_basis_tol, args.subspace_refresh_steps, seed=args.seed)


class BasisTracker:
    """Refresh schedule that keeps the basis in use within ``tol`` of the exact top-k eigenspace.

    Use per optimizer step ``t`` (all ranks in lock step)::

        if tracker.refresh_due(t):
            ...refresh...; tracker.observe_refresh(t, old_basis, new_basis, residuals, next_eigenvalue)
        elif tracker.probe_due(t):
            block = tracker.probe_block(basis, t)                 # [d, p]
            tracker.observe_probe(t, basis, block, H @ block)     # may make refresh_due(t) true
            if tracker.refresh_due(t): ...refresh now...

    Args:
        tol: largest allowed :math:`\\lVert P_{used} - P_{exact} \\rVert_2`, in (0, 1).
        max_interval: longest interval between refreshes (``subspace_refresh_steps``), ``>= 1``.
        safety: the drift controller aims at ``safety · tol`` at the end of an interval, in (0, 1].
        probe_threshold: a probe estimate above ``probe_threshold · tol`` triggers a refresh, in (0, 1].
        probes_per_interval: probes are spaced ``max(1, interval // probes_per_interval)`` steps apart (0: no
            probes).
        probe_vectors: ``p``, Gaussian combinations per probe (one pass over the data for all of them).
        growth: largest factor by which the interval may grow per refresh, ``>= 1``.
        window: refreshes whose measured drift the controller fits (and whose probe ratios calibrate probes).
        seed: seed of the probe directions (combined with the step).

    Raises:
        ValueError: for options outside the ranges above.
    """

    def __init__(
        self,
        tol: float,
        max_interval: int,
        *,
        safety: float = 0.8,
        probe_threshold: float = 1.0,
        probes_per_interval: int = 4,
        probe_vectors: int = 1,
        growth: float = 2.0,
        window: int = 8,
        seed: int = 0,
    ) -> None:
        if not 0.0 < tol < 1.0:
            raise ValueError(f"tol={tol} must be in (0, 1): it bounds the sine of a principal angle.")
        if max_interval < 1:
            raise ValueError(f"max_interval={max_interval} must be >= 1.")
        if not 0.0 < safety <= 1.0 or not 0.0 < probe_threshold <= 1.0:
            raise ValueError(f"safety={safety} and probe_threshold={probe_threshold} must be in (0, 1].")
        if probes_per_interval < 0 or probe_vectors < 1 or growth < 1.0 or window < 1:
            raise ValueError("probes_per_interval must be >= 0, probe_vectors >= 1, growth >= 1 and window >= 1.")
        self.tol = float(tol)
        self.max_interval = int(max_interval)
        self.safety = float(safety)
        self.probe_threshold = float(probe_threshold)
        self.probes_per_interval = int(probes_per_interval)
        self.probe_vectors = int(probe_vectors)
        self.growth = float(growth)
        self.window = int(window)
        self.seed = int(seed)
        self.reset()

    def reset(self) -> None:
        """Forget the state (everything :meth:`state_dict` holds); the options stay."""
        self.last_refresh_step: int | None = None
        self.interval = 1
        self.drift_rate: float | None = None  # b of the fit
        self.drift_offset = 0.0  # a + e of the fit
        self.drift_samples: list[tuple[int, float]] = []  # (interval length, measured drift) of recent refreshes
        self.probe_ratios: list[float] = []  # last probe of an interval / drift at its end
        self.last_probe_raw: float | None = None  # uncalibrated last probe of the current interval
        self.refresh_bound = 0.0
        self.weights: torch.Tensor | None = None  # [k] float64: 1 / (ϑ_i − λ_{k+1}); None without a gap
        self.scale = 0.0  # max |ϑ_i| of the last refresh
        self.last_estimate: float | None = None
        self.last_estimate_step: int | None = None
        self.force_refresh = False
        self.num_refreshes = 0
        self.num_probes = 0
        self.num_probe_refreshes = 0

    # -- decisions --------------------------------------------------------------------------------------------
    def due(self, step: int, *, projecting: bool, measure: bool) -> Action:
        """A refresh when the interval has run out or a probe found the basis off; a probe on the probe steps and
        before a measurement (its pass also gives the loss and gradient the measurement reuses); else nothing."""
        last = self.last_refresh_step
        if not (measure or projecting) or last == step:
            return None
        if self.refresh_due(step):
            return "refresh"
        if self.weights is not None and self.last_estimate_step != step and (measure or self.probe_due(step)):
            return "probe"
        return None

    def num_eigenpairs(self, k: int, extra: int) -> int:
        """At least one pair beyond k: λ_{k+1} gives the gap of the error bound."""
        return k + max(1, extra)

    def refresh_tol(self, requested: float | None, dtype: torch.dtype) -> float | None:
        """``requested`` when given, else :meth:`solver_tol` with the defaults and floors of ``dtype``."""
        if requested is not None:
            return requested
        double = dtype == torch.float64
        return self.solver_tol(1e-6 if double else 1e-3, floor=1e-9 if double else 1e-4)

    def refresh_due(self, step: int) -> bool:
        """Whether the basis must be recomputed before it is used at ``step``."""
        if self.last_refresh_step is None or self.force_refresh:
            return True
        return step - self.last_refresh_step >= self.interval

    def probe_every(self) -> int:
        """Steps between probes in the current interval (0: no probes)."""
        if self.probes_per_interval == 0 or self.weights is None:
            return 0
        every = max(1, self.interval // self.probes_per_interval)
        return every if every < self.interval else 0

    def probe_due(self, step: int) -> bool:
        """Whether to spend a probe (``probe_vectors`` HVPs) on the basis at ``step`` (never on a refresh step)."""
        every = self.probe_every()
        if every == 0 or self.last_refresh_step is None or self.refresh_due(step):
            return False
        age = step - self.last_refresh_step
        return age > 0 and age % every == 0

    def predicted_error(self, step: int) -> float:
        """Drift-controller prediction of the error at ``step``: refresh bound + offset + rate × age."""
        if self.last_refresh_step is None:
            return math.inf
        age = max(0, step - self.last_refresh_step)
        if age == 0:
            return self.refresh_bound
        rate = self.drift_rate if self.drift_rate is not None else 0.0
        return self.calibrated_refresh_bound() + self.drift_offset + rate * age

    def calibrated_refresh_bound(self) -> float:
        """The last refresh's bound ``‖R D⁻¹‖_F`` divided by the probe calibration (the same estimator, so it reads
        high by the same factor; uncalibrated before any interval has had a probe)."""
        return self.refresh_bound / self.probe_calibration()

    def error_estimate(self, step: int) -> float:
        """The tracker's estimate of the current basis error: the prediction, or a larger probe estimate."""
        estimate = self.predicted_error(step)
        if self.last_estimate is not None and self.last_estimate_step == step:
            estimate = max(estimate, self.last_estimate)
        return estimate

    def solver_tol(self, default: float, floor: float = 1e-5) -> float:
        r"""Relative residual tolerance for the next refresh so that its own bound stays near ``tol / 5``.

        With every residual at ``τ · max|ϑ|`` the bound is ``τ · max|ϑ| · ‖D⁻¹‖_F``; the result is clipped to
        ``[floor, default]``. Before the first refresh (no gap known) it is ``default``.
        """
        if self.weights is None or self.scale <= 0.0:
            return default
        norm = float(torch.linalg.vector_norm(self.weights).item())
        if not math.isfinite(norm) or norm <= 0.0:
            return default
        return float(min(default, max(floor, 0.2 * self.tol / (self.scale * norm))))

    # -- probes -----------------------------------------------------------------------------------------------
    def probe_block(self, basis: SubspaceBasis, step: int) -> torch.Tensor:
        """Probe directions ``V D⁻¹ Ω`` [d, p], Ω Gaussian from a CPU generator seeded by ``(seed, step)``.

        Raises:
            RuntimeError: before the first refresh, or without a spectral gap (no weights).
        """
        if self.weights is None:
            raise RuntimeError("BasisTracker.probe_block needs a refresh with a spectral gap first.")
        if basis.k != self.weights.numel():
            raise ValueError(f"the basis has k={basis.k} columns but the tracker knows {self.weights.numel()} gaps")
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + int(step)) % (2**63))
        omega = torch.randn(basis.k, self.probe_vectors, generator=generator, dtype=torch.float64)
        coefficients = (omega * self.weights[:, None]).to(device=basis.vectors.device, dtype=basis.vectors.dtype)
        return basis.vectors @ coefficients

    def observe_probe(self, step: int, basis: SubspaceBasis, block: torch.Tensor, products: torch.Tensor) -> float:
        """Record a probe: ``products = H @ block``. Returns ``‖(I − VVᵀ) H block‖_F / (√p · c)``, ``c`` the
        calibration (:meth:`probe_calibration`).

        If it exceeds ``probe_threshold · tol`` a refresh becomes due at once (``refresh_due(step)`` is true).
        """
        vectors = basis.vectors
        products = products.to(vectors.dtype)
        residual = products - vectors @ basis.reduce_(vectors.T @ products)
        square = basis.reduce_(torch.linalg.matrix_norm(residual.double()).square().reshape(1))  # split rows: summed
        raw = float(square.sqrt().item()) / math.sqrt(block.shape[1])
        self.last_probe_raw = raw
        estimate = raw / self.probe_calibration()
        self.num_probes += 1
        self.last_estimate, self.last_estimate_step = estimate, int(step)
        if not math.isfinite(estimate) or estimate > self.probe_threshold * self.tol:
            self.force_refresh = True
        return estimate

    def probe_calibration(self) -> float:
        """Divisor of the raw probe estimate: the median recent ratio probe / measured drift, in [0.25, 10] (1 before
        any interval has had a probe)."""
        if not self.probe_ratios:
            return 1.0
        return float(min(_MAX_CALIBRATION, max(0.25, float(torch.tensor(self.probe_ratios).median().item()))))

    # -- refreshes --------------------------------------------------------------------------------------------
    def observe_refresh(
        self,
        step: int,
        old: SubspaceBasis | None,
        new: SubspaceBasis,
        residuals: torch.Tensor,
        next_eigenvalue: float | None,
    ) -> dict[str, float]:
        """Record a refresh at ``step`` and plan the next interval.

        Args:
            step: the step whose parameters the new basis belongs to.
            old: the basis used until now (``None`` for the first refresh).
            new: the new basis; its ``eigenvalues`` [k] are the Ritz values ϑ_i.
            residuals: ``[k]`` residual norms of the new Ritz pairs.
            next_eigenvalue: λ_{k+1} (from one extra eigenpair of the solve, or an eigengap); ``None`` disables
                probes and the residual bound (the drift controller still runs).

        Returns:
            metrics: ``basis_drift`` (when ``old`` is given), ``basis_error_estimate`` (the refresh's own bound) and
            ``refresh_interval`` (the interval planned next), and ``tolerance_unreachable`` (1) when ``tol`` cannot
            be certified: no gap below the block, or the refresh's own bound above ``tol``.
        """
        out: dict[str, float] = {}
        forced = self.force_refresh and self.last_refresh_step is not None
        if new.eigenvalues is not None and next_eigenvalue is not None and math.isfinite(next_eigenvalue):
            gaps = new.eigenvalues.to(torch.float64).cpu() - float(next_eigenvalue)
            self.weights = None if bool((gaps <= 0).any()) else 1.0 / gaps
            self.refresh_bound = residual_bound(residuals, new.eigenvalues, next_eigenvalue)
            self.scale = float(new.eigenvalues.abs().max().item())
        else:
            self.weights, self.refresh_bound = None, 0.0
        if not math.isfinite(self.refresh_bound):
            self.refresh_bound = 0.0
        previous = self.last_refresh_step
        if old is not None and previous is not None and step > previous:
            elapsed = step - previous
            drift = projector_distance(old, new)
            out["basis_drift"] = drift
            if self.last_probe_raw is not None and drift > 0.0 and math.isfinite(self.last_probe_raw):
                self.probe_ratios = [*self.probe_ratios, self.last_probe_raw / drift][-self.window :]
            self.drift_samples = [*self.drift_samples, (elapsed, drift)][-self.window :]
            self.drift_offset, self.drift_rate = _envelope_fit(self.drift_samples)
            self.interval = self._next_interval(elapsed, drift)
        else:
            self.interval = 1  # no drift known yet: the second refresh measures it after one step
        if forced:
            self.num_probe_refreshes += 1
        self.last_refresh_step = int(step)
        self.force_refresh = False
        self.last_probe_raw = None
        self.last_estimate, self.last_estimate_step = self.refresh_bound, int(step)
        self.num_refreshes += 1
        out["basis_error_estimate"] = self.refresh_bound
        out["refresh_interval"] = float(self.interval)
        if self.weights is None or self.refresh_bound > self.tol:
            out["tolerance_unreachable"] = 1.0
        return out

    def _next_interval(self, elapsed: int, drift: float) -> int:
        """The largest interval whose predicted error stays within ``safety · tol`` (see the module docstring)."""
        target = self.safety * self.tol - self.calibrated_refresh_bound()
        cap = min(self.max_interval, max(1, int(self.growth * elapsed)))
        rate = self.drift_rate or 0.0
        if target <= self.drift_offset:
            interval = 1
        elif rate <= 0.0:
            interval = cap
        else:
            interval = int(min(cap, max(1, math.floor((target - self.drift_offset) / rate + 1e-9))))
        longer = min(cap, elapsed + 1)
        if drift <= target and len({t for t, _ in self.drift_samples}) < 2 and drift * longer / elapsed <= self.tol:
            # one interval length seen, within target: try one step longer, so the fit can tell offset from rate
            interval = max(interval, longer)
        return interval

    # -- checkpoints ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything the decisions depend on (the options are not stored: they come from the arguments)."""
        return {
            "last_refresh_step": self.last_refresh_step,
            "interval": self.interval,
            "drift_rate": self.drift_rate,
            "drift_offset": self.drift_offset,
            "drift_samples": list(self.drift_samples),
            "probe_ratios": list(self.probe_ratios),
            "last_probe_raw": self.last_probe_raw,
            "refresh_bound": self.refresh_bound,
            "weights": None if self.weights is None else self.weights.clone(),
            "scale": self.scale,
            "last_estimate": self.last_estimate,
            "last_estimate_step": self.last_estimate_step,
            "force_refresh": self.force_refresh,
            "num_refreshes": self.num_refreshes,
            "num_probes": self.num_probes,
            "num_probe_refreshes": self.num_probe_refreshes,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        for key, value in state.items():
            if not hasattr(self, key):
                raise KeyError(f"unknown BasisTracker state entry {key!r}")
            if key == "drift_samples":  # tuples come back as lists from some checkpoint formats
                value = [(int(t), float(d)) for t, d in value]
            setattr(self, key, value.clone() if isinstance(value, torch.Tensor) else value)

    def __repr__(self) -> str:
        return (
            f"BasisTracker(tol={self.tol}, max_interval={self.max_interval}, interval={self.interval}, "
            f"last_refresh_step={self.last_refresh_step}, refreshes={self.num_refreshes}, probes={self.num_probes})"
        )
