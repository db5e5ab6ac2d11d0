"""What the subspace schedule carries across steps (checkpointed) and what it keeps within one step (scratch)."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .metrics import AlignmentEMA
from .subspace import SubspaceBasis
from .tracking import BasisTracker, FixedInterval, RefreshSchedule

if TYPE_CHECKING:
    from .training_args import SubspaceTrainingArguments

__all__ = ["StepScratch", "SubspaceState", "run_summary", "subspace_settings"]

logger = logging.getLogger("hf_subspace.callback")

#: Settings saved with the state; a resume with different values refreshes the basis (see ``reconcile_settings``).
_BASIS_SETTINGS = (
    "k",
    "extra_eigenvalues",
    "parameter_filter",
    "parameter_names",
    "dim",
    "hessian_num_samples",
    "hessian_seed",
)


@dataclass
class StepScratch:
    """Per-step values, never checkpointed; emptied when a training run begins.

    Attributes:
        raw_grads: the gradients at θ before a SAM ascent (set by the trainer's SAM step), or None.
        theta: a copy of θ_t, reused every step (``theta_valid``: it holds this step's θ_t).
        delta: Δ = θ_new − θ_t, reused every step.
        full_grad: the full-batch gradient of this step's measurement, or None.
        projecting: updates are projected at this step.
        measured: a measurement was taken at this step (its metrics are logged at this step).
        pending: metrics waiting for the next log record; ``window``: per-step values of the logging window.
    """

    raw_grads: list[torch.Tensor | None] | None = None
    theta: list[torch.Tensor] | None = None
    theta_valid: bool = False
    delta: list[torch.Tensor] | None = None
    full_grad: torch.Tensor | None = None
    projecting: bool = False
    measured: bool = False
    pending: dict[str, float] = field(default_factory=dict)
    window: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def clear(self) -> None:
        """Drop everything of a step or window in progress (the buffers stay for reuse)."""
        self.raw_grads, self.theta_valid, self.full_grad = None, False, None
        self.projecting, self.measured = False, False
        self.pending, self.window = {}, defaultdict(list)


class SubspaceState:
    """What the schedule carries across steps; :meth:`state_dict` goes into each checkpoint (``subspace_state.pt``).

    Attributes:
        basis: the current dominant basis V [d, k] with its eigenvalues, or None before the first refresh.
        warm_start: the last solver's eigenvectors [d, k + extra] (the next solve's starting block).
        extra_eigenvalues: eigenvalues k+1 … k+extra of the last refresh.
        schedule: the :class:`~hf_subspace.tracking.RefreshSchedule` (its state is checkpointed with this one).
        switch_step: global step of the switch to projection.
        ema: the χ_k EMA of the full-batch gradient (auto start).
        at_switch, last_measurement: ``{"step", "full_train_loss", "chi_k_full_grad"}`` at the switch / last one.
        settings: the subspace settings the basis was computed with (k, extra eigenvalues, covered parameters, ...).
        hvps_total: Hessian-vector products of the run so far (refreshes and probes), resumed too.
        scratch: per-step values (:class:`StepScratch`), not checkpointed.
    """

    def __init__(self, ema: AlignmentEMA | None = None, schedule: RefreshSchedule | None = None) -> None:
        self.basis: SubspaceBasis | None = None
        self.warm_start: torch.Tensor | None = None
        self.extra_eigenvalues: torch.Tensor | None = None
        self.schedule: RefreshSchedule = schedule if schedule is not None else FixedInterval(1)
        self.switch_step: int | None = None
        self.ema = ema if ema is not None else AlignmentEMA()
        self.at_switch: dict[str, float] = {}
        self.last_measurement: dict[str, float] = {}
        self.settings: dict[str, Any] = {}
        self.saved_settings: dict[str, Any] | None = None
        self.hvps_total = 0
        self.scratch = StepScratch()

    @property
    def last_refresh_step(self) -> int | None:
        """The step whose parameters the basis in use belongs to (None: no basis)."""
        return self.schedule.last_refresh_step

    @property
    def projecting(self) -> bool:
        """Updates are projected at the current step (read-only; the callback decides it each step)."""
        return self.scratch.projecting

    @property
    def tracker(self) -> BasisTracker | None:
        """The schedule when it is certified tracking (``subspace_basis_tol``), else None."""
        return self.schedule if isinstance(self.schedule, BasisTracker) else None

    def drop_basis(self, *, keep_warm_start: bool = True) -> None:
        """Forget the basis, so the next step that needs one recomputes it."""
        self.basis, self.extra_eigenvalues = None, None
        self.schedule.last_refresh_step = None
        if not keep_warm_start:
            self.warm_start = None

    def restart(self) -> None:
        """A new run with a restarted step counter: everything tied to step numbers goes (the warm start stays)."""
        self.drop_basis()
        self.schedule.reset()
        self.switch_step, self.at_switch, self.last_measurement = None, {}, {}
        self.ema = AlignmentEMA(decay=self.ema.decay)
        self.hvps_total = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 3,
            "basis": None if self.basis is None else self.basis.state_dict(),
            "warm_start": self.warm_start,
            "extra_eigenvalues": self.extra_eigenvalues,
            "last_refresh_step": self.last_refresh_step,
            "switch_step": self.switch_step,
            "ema": self.ema.state_dict(),
            "at_switch": self.at_switch,
            "last_measurement": self.last_measurement,
            "settings": self.settings,
            "schedule": self.schedule.state_dict(),
            "hvps_total": self.hvps_total,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a saved state (versions 1–3); the saved settings land in ``saved_settings`` (None for version 1).

        Version 2 kept the tracker's state under ``"tracker"`` (None without tracking); it is read the same way.
        """
        self.basis = None if state["basis"] is None else SubspaceBasis.from_state_dict(state["basis"])
        self.warm_start = state["warm_start"]
        self.extra_eigenvalues = state["extra_eigenvalues"]
        self.switch_step = state["switch_step"]
        decay = self.ema.decay
        self.ema.load_state_dict(state["ema"])
        self.ema.decay = decay  # the decay is a setting of this run, not of the checkpoint
        self.at_switch = dict(state["at_switch"])
        self.last_measurement = dict(state["last_measurement"])
        self.saved_settings = state.get("settings")
        self.hvps_total = int(state.get("hvps_total", 0))
        schedule = state.get("schedule", state.get("tracker"))
        if schedule is not None:
            self.schedule.load_state_dict(schedule)
        self.schedule.last_refresh_step = state["last_refresh_step"]
        self.scratch.clear()

    def reconcile_settings(self) -> None:
        """After :meth:`load_state_dict`: where the saved settings differ from this run's, say so and adapt.

        A different k, number of extra eigenvalues, set of covered parameters or Hessian subset drops the saved
        basis, so it is recomputed with the new settings at the next step that needs it (the log says so); the
        schedule (switch step, EMA) is kept. Other changes (mode, target, solver, start and refresh steps) take
        effect from the resumed step, logged too.
        """
        old, new = self.saved_settings, self.settings
        if old is None:  # a checkpoint without settings: only the basis' dimension can tell
            if self.basis is not None and self.basis.dim != new["dim"]:
                logger.warning(
                    "The checkpoint's basis has dimension %d but this run covers d=%d parameters: it is dropped and "
                    "recomputed at the next step that needs it.",
                    self.basis.dim,
                    new["dim"],
                )
                self.drop_basis(keep_warm_start=False)
            return
        changed = [key for key in new if old.get(key) != new[key] and (key != "parameter_names" or old.get(key))]
        if not changed:
            return

        def show(settings: dict[str, Any], key: str) -> str:
            if key == "parameter_names":
                return f"{len(settings[key])} tensors"
            return repr(settings.get(key))

        text = ", ".join(f"{key} {show(old, key)} → {show(new, key)}" for key in changed)
        if any(key in changed for key in _BASIS_SETTINGS):
            # vectors over other coordinates cannot warm-start
            coordinates = any(key in changed for key in ("dim", "parameter_names", "parameter_filter"))
            self.drop_basis(keep_warm_start=not coordinates)
            logger.warning(
                "Resuming with changed subspace settings (%s): the saved basis is dropped and recomputed with the "
                "new settings at the next step that needs it.",
                text,
            )
        else:
            logger.warning("Resuming with changed subspace settings (%s): they apply from the resumed step.", text)


def subspace_settings(
    args: SubspaceTrainingArguments, params: Sequence[torch.Tensor], param_names: Sequence[str] | None
) -> dict[str, Any]:
    """The settings saved with the state (a resume compares them, :meth:`SubspaceState.reconcile_settings`)."""
    return {
        "k": args.subspace_k,
        "extra_eigenvalues": args.subspace_extra_eigenvalues,
        "parameter_filter": args.subspace_parameter_filter,
        "parameter_names": list(param_names) if param_names is not None else None,
        "dim": sum(p.numel() for p in params),
        "mode": args.subspace_mode,
        "target": args.subspace_target,
        "solver": args.subspace_solver,
        "start_step": args.subspace_start_step,
        "auto_start": args.subspace_auto_start,
        "refresh_steps": args.subspace_refresh_steps,
        "hessian_num_samples": args.hessian_num_samples,
        "hessian_seed": args.hessian_seed,
    }


def run_summary(args: SubspaceTrainingArguments, state: SubspaceState, num_samples: int) -> dict[str, Any]:
    """Settings and results of a subspace run (for the model card and the recipes)."""
    return {
        "mode": args.subspace_mode,
        "k": args.subspace_k,
        "start_step": args.subspace_start_step,
        "auto_start": args.subspace_auto_start,
        "switch_step": state.switch_step,
        "refresh_steps": args.subspace_refresh_steps,
        "basis_tol": args.subspace_basis_tol,
        "target": args.subspace_target,
        "solver": args.subspace_solver,
        "hessian_num_samples": num_samples,
        "parameter_filter": args.subspace_parameter_filter,
        "sam_rho": args.sam_rho,
        "at_switch": state.at_switch,
        "last": state.last_measurement,
    }
