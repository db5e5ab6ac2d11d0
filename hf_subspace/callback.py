"""`SubspaceCallback`: the per-step schedule of dominant- / bulk-projected training, as a `TrainerCallback`.

The callback gets its collaborators (the Hessian operator, the covered parameters, the state, the arguments, a log
function, and optionally the SAM optimizer), not a trainer, so it runs beside a plain `transformers.Trainer` too.
Per optimizer step t, in the Trainer's own order:

``on_pre_optimizer_step`` (gradients final, parameters θ_t)
    1. schedule: is projection on (``subspace_start_step`` reached, or the χ_k EMA crossed its threshold)? Is an
       alignment measurement due (every ``subspace_alignment_steps``, and at the switch)?
    2. :meth:`SubspaceCallback._refresh_due` decides whether the basis is recomputed (fixed interval, or certified
       tracking with ``subspace_basis_tol``: :class:`~hf_subspace.tracking.BasisTracker`); :meth:`_refresh`
       recomputes it (top-k eigenvectors of the Hessian at θ_t, warm-started from the previous basis);
    3. :meth:`_measure`: loss, full-batch gradient, χ_k and its EMA over the Hessian dataset;
    4. χ_k of the minibatch gradient (a parameter without gradient counts as zero); a non-finite gradient stops
       training here, before the step is applied or checkpointed;
    5. with ``subspace_target="gradient"``: the gradient is projected; θ_t is kept for step 6.
``optimizer.step()`` on the (raw or projected) gradient, then ``on_optimizer_step``
    6. with ``subspace_target="update"``: :func:`~hf_subspace.subspace.projected_update_` replaces Δ = θ_new − θ_t by
       PΔ (θ_t + PΔ) or Δ − PΔ (θ_new − PΔ); χ_k of the applied update, effective learning rates.
``on_step_end``
    7. at the last step, a final measurement; at the Trainer's logging steps, the per-step metrics' window means.

The callback owns its logging: every record goes through the ``log`` function it was given (``trainer.log``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from . import distributed
from .eigensolvers import top_eigenpairs
from .hessian import HessianOperator
from .metrics import (
    METRIC_PREFIX,
    AlignmentEMA,
    effective_learning_rates,
    eigenvalue_tag,
    tensorboard_writers,
    write_tensorboard_header,
)
from .optim import SAM
from .subspace import SubspaceBasis, fraction_in_span, projected_update_, sparse_coefficients, vectors_norm
from .tracking import BasisTracker
from .training_args import SubspaceTrainingArguments

__all__ = ["SubspaceCallback", "SubspaceState", "tensorboard_writers"]

logger = logging.getLogger(__name__)

#: Settings saved with the state; a resume with different values refreshes the basis (see ``load_state_dict``).
_BASIS_SETTINGS = (
    "k",
    "extra_eigenvalues",
    "parameter_filter",
    "parameter_names",
    "dim",
    "hessian_num_samples",
    "hessian_seed",
)


class SubspaceState:
    """What the schedule carries across steps; :meth:`state_dict` goes into each checkpoint (``subspace_state.pt``).

    Attributes:
        basis: the current dominant basis V [d, k] with its eigenvalues, or None before the first refresh.
        warm_start: the last solver's eigenvectors [d, k + extra] (LOBPCG's starting block).
        extra_eigenvalues: eigenvalues k+1 … k+extra of the last refresh.
        last_refresh_step, switch_step: global steps of the last refresh and of the switch to projection.
        ema: the χ_k EMA of the full-batch gradient (auto start).
        at_switch, last_measurement: ``{"step", "full_train_loss", "chi_k_full_grad"}`` at the switch / last one.
        settings: the subspace settings the basis was computed with (k, extra eigenvalues, covered parameters, ...).
        raw_grads: per step, not saved: the gradients at θ before a SAM ascent (set by the trainer's SAM step).
    """

    def __init__(self, ema: AlignmentEMA | None = None) -> None:
        self.basis: SubspaceBasis | None = None
        self.warm_start: torch.Tensor | None = None
        self.extra_eigenvalues: torch.Tensor | None = None
        self.last_refresh_step: int | None = None
        self.switch_step: int | None = None
        self.ema = ema if ema is not None else AlignmentEMA()
        self.at_switch: dict[str, float] = {}
        self.last_measurement: dict[str, float] = {}
        self.settings: dict[str, Any] = {}
        self.saved_settings: dict[str, Any] | None = None
        self.tracker: BasisTracker | None = None  # certified tracking (subspace_basis_tol), set by the callback
        self.hvps_total = 0  # Hessian-vector products of the run so far (refreshes and probes), resumed too
        # per step, not checkpointed
        self.raw_grads: list[torch.Tensor | None] | None = None
        self.theta_old: list[torch.Tensor] | None = None
        self.theta_buffer: list[torch.Tensor] | None = None
        self.delta_buffer: list[torch.Tensor] | None = None
        self.full_grad: torch.Tensor | None = None
        self.projecting = False
        self.measured = False
        self.pending: dict[str, float] = {}
        self.window: dict[str, list[float]] = defaultdict(list)

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 2,
            "basis": None if self.basis is None else self.basis.state_dict(),
            "warm_start": self.warm_start,
            "extra_eigenvalues": self.extra_eigenvalues,
            "last_refresh_step": self.last_refresh_step,
            "switch_step": self.switch_step,
            "ema": self.ema.state_dict(),
            "at_switch": self.at_switch,
            "last_measurement": self.last_measurement,
            "settings": self.settings,
            "tracker": None if self.tracker is None else self.tracker.state_dict(),
            "hvps_total": self.hvps_total,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a saved state; the saved settings land in ``saved_settings`` (None for a version-1 checkpoint)."""
        self.basis = None if state["basis"] is None else SubspaceBasis.from_state_dict(state["basis"])
        self.warm_start = state["warm_start"]
        self.extra_eigenvalues = state["extra_eigenvalues"]
        self.last_refresh_step = state["last_refresh_step"]
        self.switch_step = state["switch_step"]
        decay = self.ema.decay
        self.ema.load_state_dict(state["ema"])
        self.ema.decay = decay  # the decay is a setting of this run, not of the checkpoint
        self.at_switch = dict(state["at_switch"])
        self.last_measurement = dict(state["last_measurement"])
        self.saved_settings = state.get("settings")
        self.hvps_total = int(state.get("hvps_total", 0))
        if self.tracker is not None and state.get("tracker") is not None:
            self.tracker.load_state_dict(state["tracker"])


class SubspaceCallback(TrainerCallback):
    """Projected training and its alignment metrics, as a `TrainerCallback` (see the module docstring).

    Args:
        operator: the Hessian of the training loss over the Hessian dataset, over exactly ``params``.
        params: the covered parameters (the order of the basis' rows).
        args: the subspace settings (mode, k, schedule, solver, ...).
        log: called with each dict of metrics (names ``subspace/...``); pass ``trainer.log``.
        state: the schedule's state (a fresh :class:`SubspaceState` by default).
        param_names: names of ``params`` (saved with the state, to detect a changed parameter filter on resume).
        sam_optimizer: returns the SAM optimizer when training with SAM (its perturbation is undone before the
            optimizer step), else None.
        tensorboard: returns the TensorBoard writers that should get the custom-scalars layout and the metric
            definitions at train begin (see :func:`tensorboard_writers`).

    Use beside a plain Trainer::

        cb = SubspaceCallback(HessianOperator(model, batches, params=params), params, args, log=lambda m: None)
        trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb])
        cb.log = trainer.log
    """

    def __init__(
        self,
        operator: HessianOperator,
        params: Sequence[torch.nn.Parameter],
        args: SubspaceTrainingArguments,
        log: Callable[[dict[str, float]], None],
        *,
        state: SubspaceState | None = None,
        param_names: Sequence[str] | None = None,
        sam_optimizer: Callable[[], SAM | None] | None = None,
        tensorboard: Callable[[], Iterable[Any]] | None = None,
    ) -> None:
        self.operator = operator
        self.params = list(params)
        self.args = args
        self.log = log
        self.state = state if state is not None else SubspaceState(AlignmentEMA(decay=args.subspace_ema_decay))
        self.sam_optimizer = sam_optimizer or (lambda: None)
        self.tensorboard = tensorboard
        self.state.settings = {
            "k": args.subspace_k,
            "extra_eigenvalues": args.subspace_extra_eigenvalues,
            "parameter_filter": args.subspace_parameter_filter,
            "parameter_names": list(param_names) if param_names is not None else None,
            "dim": sum(p.numel() for p in self.params),
            "mode": args.subspace_mode,
            "target": args.subspace_target,
            "solver": args.subspace_solver,
            "start_step": args.subspace_start_step,
            "auto_start": args.subspace_auto_start,
            "refresh_steps": args.subspace_refresh_steps,
            "hessian_num_samples": args.hessian_num_samples,
            "hessian_seed": args.hessian_seed,
        }
        self.alignment_steps = args.alignment_steps
        self._seen_grad = [False] * len(self.params)
        tol = getattr(args, "subspace_basis_tol", None)
        if tol is not None and self.state.tracker is None:
            self.state.tracker = BasisTracker(tol, args.subspace_refresh_steps, seed=args.seed)

    # -- resume ----------------------------------------------------------------------------------------------
    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Load a checkpoint's state; when the saved settings differ from this run's, say so and adapt.

        A different k, number of extra eigenvalues, set of covered parameters or Hessian subset drops the saved
        basis, so it is recomputed with the new settings at the next step that needs it (the log says so); the
        schedule (switch step, EMA) is kept. Other changes (mode, target, solver, start and refresh steps) take
        effect from the resumed step, logged too.
        """
        st = self.state
        st.load_state_dict(saved)
        old, new = st.saved_settings, st.settings
        if old is None:  # a checkpoint without settings: only the basis' dimension can tell
            if st.basis is not None and st.basis.dim != new["dim"]:
                logger.warning(
                    "The checkpoint's basis has dimension %d but this run covers d=%d parameters: it is dropped and "
                    "recomputed at the next step that needs it.",
                    st.basis.dim,
                    new["dim"],
                )
                st.basis, st.warm_start, st.extra_eigenvalues, st.last_refresh_step = None, None, None, None
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
            if any(key in changed for key in ("dim", "parameter_names", "parameter_filter")):
                st.warm_start = None  # vectors over other coordinates cannot warm-start
            st.basis, st.extra_eigenvalues, st.last_refresh_step = None, None, None
            logger.warning(
                "Resuming with changed subspace settings (%s): the saved basis is dropped and recomputed with the "
                "new settings at the next step that needs it.",
                text,
            )
        else:
            logger.warning("Resuming with changed subspace settings (%s): they apply from the resumed step.", text)

    # -- schedule --------------------------------------------------------------------------------------------
    def _is_switched(self, step: int) -> bool:
        args, st = self.args, self.state
        if args.subspace_mode == "none":
            return False
        if args.subspace_auto_start:
            return st.switch_step is not None and step >= st.switch_step
        return step >= args.subspace_start_step

    def _refresh_due(self, step: int, measure: bool) -> bool:
        """Whether the basis must be recomputed at θ_step before this step's projection / measurement.

        Due when there is no basis, when projecting and ``subspace_refresh_steps`` have passed since the last
        refresh, and for a measurement outside projection (so χ_k is measured against the basis at θ_step). With
        ``subspace_basis_tol`` the tracker decides instead (:meth:`_tracked_refresh_due`, which may probe).
        """
        st = self.state
        if not (measure or st.projecting):
            return False
        if st.basis is None or st.last_refresh_step is None:
            return True
        if st.tracker is not None:
            return st.last_refresh_step != step and self._tracked_refresh_due(step, measure)
        if st.projecting:
            return step - st.last_refresh_step >= self.args.subspace_refresh_steps
        return st.last_refresh_step != step

    def _tracked_refresh_due(self, step: int, measure: bool) -> bool:
        """Certified tracking (``subspace_basis_tol``): refresh when the tracker's interval has run out; else, on its
        probe steps and before a measurement, probe the basis (one Hessian pass, which also yields the loss and
        gradient the measurement reuses) and refresh when the estimate exceeds the tracker's threshold."""
        st = self.state
        tracker = st.tracker
        assert tracker is not None and st.basis is not None
        if tracker.refresh_due(step):
            return True
        if not (measure or tracker.probe_due(step)) or tracker.weights is None:
            return False
        block = tracker.probe_block(st.basis, step)
        before = self.operator.num_matvecs
        with _step_context(step, "the basis-error probe"):
            products = self.operator.matmat(block)
        st.hvps_total += self.operator.num_matvecs - before
        estimate = tracker.observe_probe(step, st.basis, block, products)
        self._record({"basis_error_estimate": estimate})
        return tracker.refresh_due(step)

    def _refresh(self, step: int) -> None:
        """Recompute the top-(k + extra) eigenpairs at the current parameters and install the new basis."""
        args, st = self.args, self.state
        num = args.subspace_k + args.subspace_extra_eigenvalues
        tracker = st.tracker
        solver_tol = args.subspace_solver_tol
        if tracker is not None:
            num = args.subspace_k + max(1, args.subspace_extra_eigenvalues)  # λ_{k+1}: the gap of the error bound
            if solver_tol is None:
                double = self.operator.dtype == torch.float64
                solver_tol = tracker.solver_tol(1e-6 if double else 1e-3, floor=1e-9 if double else 1e-4)
        method = args.subspace_solver
        if method == "auto":
            method = "lobpcg" if st.warm_start is not None else "lanczos"
        start = time.perf_counter()
        before = self.operator.num_matvecs
        with _step_context(step, "the basis refresh"):
            result = top_eigenpairs(
                self.operator,
                num,
                method=method,
                init=st.warm_start,  # every method warm-starts (Lanczos and eigsh from the sum of its columns)
                tol=solver_tol,
                max_iters=args.subspace_solver_max_iters,
                seed=args.seed + step,
                progress=args.subspace_progress,
            )
        seconds = time.perf_counter() - start
        st.hvps_total += self.operator.num_matvecs - before
        k = args.subspace_k
        vectors = result.eigenvectors
        basis = SubspaceBasis(vectors[:, :k] if num > k else vectors, result.eigenvalues[:k], rows=self.operator.rows)
        out: dict[str, float | None] = {}
        old = st.basis if st.basis is not None and st.basis.dim == basis.dim else None
        if old is not None:
            out["basis_overlap"] = basis.overlap(old)
        if tracker is not None:
            out.update(tracker.observe_refresh(step, old, basis, result.residuals[:k], float(result.eigenvalues[k])))
        st.basis, st.warm_start, st.last_refresh_step = basis, vectors, step
        logged = args.subspace_k + args.subspace_extra_eigenvalues
        st.extra_eigenvalues = result.eigenvalues[k:logged]
        values = result.eigenvalues.tolist()
        for i, value in enumerate(values[:logged], start=1):
            out[eigenvalue_tag(i, k, logged)] = value
        out["eigengap"] = values[k - 1] - values[k] if num > k else getattr(result, "eigengap", None)
        out["solver_hvps"] = result.num_matvecs
        out["solver_seconds"] = seconds
        out["solver_max_residual"] = float(result.residuals.max().item())
        out["solver_converged"] = float(result.converged)
        self._record(out)

    def _measure(self, step: int, *, update_ema: bool) -> torch.Tensor:
        """Loss, full-batch gradient g and χ_k(g) over the Hessian dataset at θ_step (and the EMA); returns g."""
        st = self.state
        assert st.basis is not None
        with _step_context(step, "the full-batch measurement"):
            loss, grad = self.operator.loss_and_gradient()  # raises FloatingPointError on a non-finite value
        chi = st.basis.dominant_fraction(grad)
        st.last_measurement = {"step": step, "full_train_loss": loss, "chi_k_full_grad": chi}
        out = {"full_train_loss": loss, "chi_k_full_grad": chi}
        if update_ema:
            out["chi_k_full_grad_ema"] = st.ema.update(chi)
        self._record(out)
        return grad

    def _record(self, metrics: Mapping[str, float | None]) -> None:
        """Queue metrics for the next log record; None and non-finite values are left out (never logged as numbers)."""
        for name, value in metrics.items():
            if value is not None and math.isfinite(value):
                self.state.pending[METRIC_PREFIX + name] = float(value)

    def flush(self) -> dict[str, float]:
        """Pending metrics plus window means of the per-step ones; empties both."""
        st = self.state
        logs = dict(st.pending)
        for name, values in st.window.items():
            if values:
                logs[METRIC_PREFIX + name] = float(np.mean(values))
        if logs:
            logs[METRIC_PREFIX + "projecting"] = float(st.projecting)
            logs[METRIC_PREFIX + "hvps_total"] = float(st.hvps_total)
        st.pending, st.window = {}, defaultdict(list)
        return logs

    def _log_pending(self, control: TrainerControl) -> None:
        logs = self.flush()
        if logs:
            should_log = control.should_log  # Trainer.log's on_log clears it; keep the Trainer's own decision
            self.log(logs)
            control.should_log = should_log

    def summary(self) -> dict[str, Any]:
        """Settings and results of the subspace run (for the model card and recipes)."""
        args, st = self.args, self.state
        return {
            "mode": args.subspace_mode,
            "k": args.subspace_k,
            "start_step": args.subspace_start_step,
            "auto_start": args.subspace_auto_start,
            "switch_step": st.switch_step,
            "refresh_steps": args.subspace_refresh_steps,
            "basis_tol": getattr(args, "subspace_basis_tol", None),
            "target": args.subspace_target,
            "solver": args.subspace_solver,
            "hessian_num_samples": self.operator.num_samples,
            "parameter_filter": args.subspace_parameter_filter,
            "sam_rho": args.sam_rho,
            "at_switch": st.at_switch,
            "last": st.last_measurement,
        }

    # -- Trainer hooks ---------------------------------------------------------------------------------------
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        targs = self.args
        self.alignment_steps = targs.alignment_steps
        self._seen_grad = [False] * len(self.params)
        if targs.subspace_mode != "none" and state.max_steps > 0 and targs.subspace_start_step >= state.max_steps:
            # Projection can never start: spend Hessian products only on measurements the user asked for.
            if targs.subspace_alignment_steps is None:
                self.alignment_steps = 0
            logger.warning(
                "subspace_start_step=%d is not below max_steps=%d: subspace_mode=%r never projects an update. %s "
                "Lower subspace_start_step (or raise max_steps) to project.",
                targs.subspace_start_step,
                state.max_steps,
                targs.subspace_mode,
                "No Hessian is computed (set subspace_alignment_steps to measure alignment)."
                if self.alignment_steps == 0
                else f"Alignment is still measured every {self.alignment_steps} steps.",
            )
        if not distributed.is_main_process() or self.tensorboard is None:
            return
        for writer in self.tensorboard():
            write_tensorboard_header(writer, self.summary(), extra_eigenvalues=targs.subspace_extra_eigenvalues > 0)

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        st, targs = self.state, self.args
        step = state.global_step
        sam = self.sam_optimizer()
        if sam is not None and sam.is_perturbed:
            sam.restore()  # the optimizer steps from θ with the gradient taken at θ + ε
        grads = st.raw_grads if st.raw_grads is not None else [p.grad for p in self.params]
        st.raw_grads = None
        norm = vectors_norm([g for g in grads if g is not None])
        if not math.isfinite(norm) and not args.fp16:  # fp16's loss scaler skips overflowing steps by itself
            self._log_pending(control)
            raise FloatingPointError(
                f"SubspaceTrainer: the minibatch gradient at step {step} is not finite (NaN or inf), so training "
                f"stops before this update is applied or saved; the last checkpoint is at or before step {step}. "
                "Check the training data for NaN/inf, or lower the learning rate."
            )
        for i, g in enumerate(grads):
            self._seen_grad[i] = self._seen_grad[i] or g is not None
        every = self.alignment_steps
        st.projecting = self._is_switched(step)
        # Measure every `every` steps, and at the switch itself (the card reports loss and χ_k there).
        switching_now = st.projecting and st.switch_step is None
        measure = every > 0 and (step % every == 0 or switching_now)
        if self._refresh_due(step, measure):
            self._refresh(step)
        st.full_grad = None
        if measure and st.basis is not None:
            st.full_grad = self._measure(step, update_ema=True)
            ema = st.ema.value
            if (
                targs.subspace_auto_start
                and targs.subspace_mode != "none"
                and st.switch_step is None
                and step >= targs.subspace_start_step
                and ema is not None
                and ema >= targs.subspace_auto_start_threshold
            ):
                st.switch_step = step
                st.projecting = True
                self._record({"switch_step": step})
                logger.info("SubspaceTrainer: alignment EMA %.4f reached; projecting from step %d", ema, step)
        if st.projecting and st.switch_step is None:
            st.switch_step = step
            self._record({"switch_step": step})
        if measure and st.projecting and not st.at_switch:
            st.at_switch = dict(st.last_measurement)
        st.measured = measure
        basis = st.basis
        if basis is None:
            return
        if math.isfinite(norm):
            # A parameter without a gradient (unused in this step) counts as a zero block of g.
            coeffs = sparse_coefficients(basis, self.params, grads)
            st.window["chi_k_minibatch_grad"].append(fraction_in_span(coeffs, norm))
        if st.projecting and targs.subspace_target == "gradient":
            # A parameter that has had a gradient before takes part with zeros (its projected gradient need not be
            # zero); one that never had one stays without (its rows of an exact V are zero): it stays fixed.
            full = [
                p.grad if p.grad is not None else torch.zeros_like(p) if seen else None
                for p, seen in zip(self.params, self._seen_grad)
            ]
            used = [(p, g) for p, g in zip(self.params, full) if g is not None]
            coeffs = sparse_coefficients(basis, self.params, full)
            for part, g in zip(basis.expand_parts(coeffs, self.params), full):
                if g is None:
                    continue
                dom = part.to(g.dtype)
                if targs.subspace_mode == "dominant":
                    g.copy_(dom)
                else:
                    g.sub_(dom)
            for p, g in used:
                p.grad = g
        st.theta_old = _copy_into(st.theta_buffer, self.params)
        st.theta_buffer = st.theta_old

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        st = self.state
        if st.theta_old is None or st.basis is None:
            return
        params, old, basis = self.params, st.theta_old, st.basis
        st.theta_old = None
        mode = self.args.subspace_mode
        with torch.no_grad():
            # Δ = θ_new − θ_t in a buffer reused every step (this is the hot path between refreshes).
            delta = _copy_into(st.delta_buffer, params)
            st.delta_buffer = delta
            torch._foreach_sub_(delta, old)
            if st.projecting and self.args.subspace_target == "update":
                fixed = [not seen for seen in self._seen_grad]
                coeffs = projected_update_(params, old, delta, basis, mode, fixed=fixed)  # type: ignore[arg-type]
                values = _finite_values(coeffs, state.global_step)
                # χ_k of the applied update is 1 (Δ = V c) or 0 (Vᵀ(Δ − VVᵀΔ) = 0) by construction.
                nonzero = mode == "dominant" and any(v != 0.0 for v in values)
                st.window["chi_k_update"].append(1.0 if nonzero else 0.0)
            else:
                coeffs = basis.coefficients(delta)
                _finite_values(coeffs, state.global_step)
                st.window["chi_k_update"].append(fraction_in_span(coeffs, vectors_norm(delta)))
            if st.full_grad is not None:
                eta_dom, eta_bulk = effective_learning_rates(basis, delta, st.full_grad)
                self._record({"effective_lr_dominant": eta_dom, "effective_lr_bulk": eta_bulk})
                st.full_grad = None
        if st.measured:
            # Logged while global_step is still t: the measurement is of θ_t, like the Trainer's loss log at step t.
            st.measured = False
            self._log_pending(control)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        st = self.state
        last = control.should_training_stop or (state.max_steps > 0 and state.global_step >= state.max_steps)
        if last and self.alignment_steps > 0 and st.basis is not None:
            # A final measurement with a basis refreshed at the final parameters (before the TensorBoard writer
            # closes at train end), so the card and the recipes report loss and alignment at the end.
            step = state.global_step
            # (with certified tracking: only when the tracker's interval ran out or a probe finds the basis off)
            if st.last_refresh_step != step and (st.tracker is None or self._tracked_refresh_due(step, True)):
                self._refresh(step)
            self._measure(step, update_ema=False)
        if last or control.should_log:
            self._log_pending(control)


@contextlib.contextmanager
def _step_context(step: int, what: str) -> Iterator[None]:
    """Re-raise a `FloatingPointError` from the Hessian with the training step and what was being computed."""
    try:
        yield
    except FloatingPointError as err:
        raise FloatingPointError(
            f"SubspaceTrainer: {what} at step {step} hit a non-finite value ({err}). Training stops before step "
            f"{step}'s update is applied or saved."
        ) from err


def _finite_values(coeffs: torch.Tensor, step: int) -> list[float]:
    """The k coefficients Vᵀ Δ as floats (one device sync), checked: they are NaN or inf whenever any entry of Δ is
    (NaN · 0 = NaN), so a diverged update is caught before the Trainer can save it."""
    values = coeffs.tolist()
    if not all(math.isfinite(v) for v in values):
        raise FloatingPointError(
            f"SubspaceTrainer: the parameter update at step {step} is not finite (NaN or inf); training stops before "
            "it is saved. Lower the learning rate or check the data."
        )
    return values


def _copy_into(buffer: list[torch.Tensor] | None, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``params`` copied into ``buffer`` (reused when shapes, dtypes and devices match; else freshly allocated)."""
    if (
        buffer is None
        or len(buffer) != len(params)
        or any(b.shape != p.shape or b.dtype != p.dtype or b.device != p.device for b, p in zip(buffer, params))
    ):
        return [p.detach().clone() for p in params]
    with torch.no_grad():
        torch._foreach_copy_(buffer, [p.detach() for p in params])
    return buffer
