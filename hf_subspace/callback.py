"""`SubspaceCallback`: the per-step schedule of dominant- / bulk-projected training, as a `TrainerCallback`.

The callback gets its collaborators (the Hessian operator, the covered parameters, the state, the arguments, a log
function, and optionally the SAM optimizer), not a trainer, so it runs beside a plain `transformers.Trainer` too.
Per optimizer step t, in the Trainer's own order:

``on_pre_optimizer_step`` (gradients final, parameters θ_t)
    1. :meth:`~SubspaceCallback._final_gradients`: SAM's perturbation undone; a non-finite gradient stops training
       here, before the step is applied or checkpointed;
    2. is projection on (``subspace_start_step`` reached, or the χ_k EMA crossed its threshold)? Is an alignment
       measurement due (every ``subspace_alignment_steps``, and at the switch)?
    3. :meth:`~SubspaceCallback._update_basis`: the refresh schedule (:class:`~hf_subspace.tracking.RefreshSchedule`:
       a fixed interval, or certified tracking with ``subspace_basis_tol``) says whether to probe or to recompute the
       basis (top-k eigenvectors of the Hessian at θ_t, warm-started from the previous ones);
    4. :meth:`~SubspaceCallback._measure`: loss, full-batch gradient, χ_k and its EMA over the Hessian dataset;
    5. χ_k of the minibatch gradient (a parameter without gradient counts as zero);
    6. with ``subspace_target="gradient"``: :meth:`~SubspaceCallback._project_gradients`; θ_t is kept for step 7.
``optimizer.step()`` on the (raw or projected) gradient, then ``on_optimizer_step``
    7. with ``subspace_target="update"``: :func:`~hf_subspace.subspace.projected_update_` replaces Δ = θ_new − θ_t by
       PΔ (θ_t + PΔ) or Δ − PΔ (θ_new − PΔ); χ_k of the applied update, effective learning rates.
``on_step_end``
    8. at the last step, a final measurement; at the Trainer's logging steps, the per-step metrics' window means.

Over an FSDP2 model (``fully_shard``, e.g. accelerate's FSDP2 plugin, which shards the model in place inside
``train()``: :meth:`~SubspaceCallback.follow_sharding` runs at train begin), the covered parameters and their
gradients are DTensors: the basis holds every parameter's local shard (the operator's rows), each process projects
its own gradient and update shards with the ``k`` coefficients summed over the processes, and norms are summed too.

The callback owns its logging: every record goes through the ``log`` function it was given (``trainer.log``), at most
one value per metric and step. A new ``train()`` without a checkpoint restarts the schedule with the step counter;
metrics of an abandoned (interrupted) run are never logged.
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
from ._fsdp import follow_fully_shard, vector_layout
from ._notices import CostNotes, ProgressOperator, alignment_interval
from ._shards import local_part
from ._step_checks import copy_into, finite_values, step_context
from .eigensolvers import top_eigenpairs
from .hessian import HessianOperator
from .metrics import (
    METRIC_PREFIX,
    AlignmentEMA,
    effective_learning_rates,
    eigenvalue_tag,
    tensorboard_writers,
    write_settings,
    write_tensorboard_header,
)
from .optim import SAM
from .subspace import SubspaceBasis, fraction_in_span, projected_update_, sparse_coefficients, vectors_norm
from .subspace_state import SubspaceState, run_summary, subspace_settings
from .tracking import refresh_schedule
from .training_args import SubspaceTrainingArguments

__all__ = ["SubspaceCallback", "SubspaceState", "tensorboard_writers"]

logger = logging.getLogger(__name__)


class SubspaceCallback(TrainerCallback):
    """Projected training and its alignment metrics, as a `TrainerCallback` (see the module docstring).

    Args:
        operator: the Hessian of the training loss over the Hessian dataset, over exactly ``params``.
        params: the covered parameters (the order of the basis' rows).
        args: the subspace settings (mode, k, schedule, solver, ...).
        log: called with each dict of metrics (names ``subspace/...``); pass ``trainer.log``.
        state: the schedule's state (a fresh :class:`SubspaceState` with :func:`refresh_schedule` by default).
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
        if state is None:
            state = SubspaceState(AlignmentEMA(decay=args.subspace_ema_decay), refresh_schedule(args))
        self.state = state
        self.sam_optimizer = sam_optimizer or (lambda: None)
        self.tensorboard = tensorboard
        self.state.settings = subspace_settings(args, self.params, param_names)
        self.alignment_steps = args.alignment_steps
        self._seen_grad = [False] * len(self.params)
        self._loaded = False  # a checkpoint's state was loaded since the last run began
        self._notes = CostNotes()
        self._log_step: int | None = None
        self._log_tags: set[str] = set()

    def follow_sharding(self) -> None:
        """After FSDP2 sharded the model in place (accelerate does so inside ``train()``, after this callback was
        built): cover its DTensor parameters instead of the replaced ones; a basis of the old layout is dropped."""
        if not follow_fully_shard(self.operator):
            return
        self.params = list(self.operator.params)  # type: ignore[arg-type]
        self._seen_grad = [False] * len(self.params)
        if self.state.basis is not None or self.state.warm_start is not None:
            self.state.drop_basis(keep_warm_start=False)
        logger.info("SubspaceTrainer: the model is FSDP2-sharded; the basis holds each process's parameter shards")

    def _norm_reduce(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Sums squared norms over the processes when the parameters are FSDP2 shards (None: whole on every rank)."""
        return self.operator.reduce_ if getattr(self.operator, "fsdp", False) else None

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Load a checkpoint's state; where its settings differ from this run's, say so and adapt
        (:meth:`SubspaceState.reconcile_settings`)."""
        self.state.load_state_dict(saved)
        self.state.reconcile_settings()
        self._loaded = True

    # -- schedule --------------------------------------------------------------------------------------------
    def _is_switched(self, step: int) -> bool:
        args, st = self.args, self.state
        if args.subspace_mode == "none":
            return False
        if args.subspace_auto_start:
            return st.switch_step is not None and step >= st.switch_step
        return step >= args.subspace_start_step

    def _measures_at(self, step: int) -> bool:
        """An alignment measurement at ``step``: every ``alignment_steps``, and at the switch itself."""
        switching = self._is_switched(step) and self.state.switch_step is None
        return self.alignment_steps > 0 and (step % self.alignment_steps == 0 or switching)

    def _update_basis(self, step: int, *, projecting: bool, measure: bool) -> None:
        """Ask the refresh schedule what the basis needs at ``step`` (nothing, a probe, a refresh) and do it."""
        st = self.state
        if st.basis is None:
            st.schedule.last_refresh_step = None
        action = st.schedule.due(step, projecting=projecting, measure=measure)
        if action == "probe":
            self._probe(step)
            action = st.schedule.due(step, projecting=projecting, measure=measure)
        if action == "refresh":
            self._refresh(step)

    @contextlib.contextmanager
    def _counting(self, step: int, what: str) -> Iterator[None]:
        """Add the products computed inside to ``hvps_total``; name the step and the work in a non-finite error."""
        before = self.operator.num_matvecs
        try:
            with step_context(step, what):
                yield
        finally:
            self.state.hvps_total += self.operator.num_matvecs - before

    def _probe(self, step: int) -> None:
        """One Hessian pass on the tracker's probe block (it also yields the loss and gradient a measurement reuses)."""
        st = self.state
        assert st.tracker is not None and st.basis is not None
        block = st.tracker.probe_block(st.basis, step)
        with self._counting(step, "the basis-error probe"):
            products = self.operator.matmat(block)
        self._record({"basis_error_estimate": st.schedule.observe_probe(step, st.basis, block, products)})

    def _refresh(self, step: int) -> None:
        """Recompute the top eigenpairs at the current parameters (as many as the schedule asks) and install them."""
        args, st = self.args, self.state
        k, schedule = args.subspace_k, st.schedule
        num = schedule.num_eigenpairs(k, args.subspace_extra_eigenvalues)
        method = args.subspace_solver
        if method == "auto":
            method = "lobpcg" if st.warm_start is not None else "lanczos"
        start = time.perf_counter()
        desc = f"basis refresh at step {step}"
        with (
            self._counting(step, "the basis refresh"),
            ProgressOperator(self.operator, self._notes.last_products, desc) as op,
        ):
            result = top_eigenpairs(
                op,
                num,
                method=method,
                init=st.warm_start,  # every method warm-starts (Lanczos and eigsh from the sum of its columns)
                tol=schedule.refresh_tol(args.subspace_solver_tol, self.operator.dtype),
                max_iters=args.subspace_solver_max_iters,
                seed=args.seed + step,
                progress=args.subspace_progress,
            )
        self._notes.after_solve(time.perf_counter() - start, result.num_matvecs, self.operator)
        basis = SubspaceBasis(result.eigenvectors[:, :k], result.eigenvalues[:k], rows=vector_layout(self.operator))
        out: dict[str, float | None] = {}
        old = st.basis if st.basis is not None and st.basis.dim == basis.dim else None
        if old is not None:
            out["basis_overlap"] = basis.overlap(old)
        next_value = float(result.eigenvalues[k]) if num > k else None
        out.update(schedule.observe_refresh(step, old, basis, result.residuals[:k], next_value))
        st.basis, st.warm_start = basis, result.eigenvectors
        logged = k + args.subspace_extra_eigenvalues
        st.extra_eigenvalues = result.eigenvalues[k:logged]
        values = result.eigenvalues.tolist()
        for i, value in enumerate(values[:logged], start=1):
            out[eigenvalue_tag(i, k, logged)] = value
        out["eigengap"] = values[k - 1] - values[k] if num > k else result.eigengap
        out["solver_hvps"] = result.num_matvecs
        out["solver_seconds"] = self._notes.last_seconds
        out["solver_max_residual"] = float(result.residuals.max().item())
        out["solver_converged"] = float(result.converged)
        self._record(out)
        self._notes.after_refresh(step, out, self.args.subspace_basis_tol)

    def _measure(self, step: int, *, update_ema: bool) -> torch.Tensor:
        """Loss, full-batch gradient g and χ_k(g) over the Hessian dataset at θ_step (and the EMA); returns g."""
        st = self.state
        assert st.basis is not None
        with step_context(step, "the full-batch measurement"):
            loss, grad = self.operator.loss_and_gradient()  # raises FloatingPointError on a non-finite value
        chi = st.basis.dominant_fraction(grad)
        st.last_measurement = {"step": step, "full_train_loss": loss, "chi_k_full_grad": chi}
        out = {"full_train_loss": loss, "chi_k_full_grad": chi}
        if update_ema:
            out["chi_k_full_grad_ema"] = st.ema.update(chi)
        self._record(out)
        return grad

    def _final_measurement(self, step: int) -> None:
        """Loss and alignment at the final parameters, with a basis that belongs to them (the schedule decides)."""
        if (
            self.alignment_steps > 0
            and self.state.basis is not None
            and self.state.last_measurement.get("step") != step
        ):
            self._update_basis(step, projecting=False, measure=True)
            self._measure(step, update_ema=False)

    # -- logging ---------------------------------------------------------------------------------------------
    def _record(self, metrics: Mapping[str, float | None]) -> None:
        """Queue metrics for the next log record; None and non-finite values are left out (never logged as numbers)."""
        for name, value in metrics.items():
            if value is not None and math.isfinite(value):
                self.state.scratch.pending[METRIC_PREFIX + name] = float(value)

    def _close_window(self) -> None:
        """Queue the means of the per-step metrics over the logging window, and start a new window."""
        sc = self.state.scratch
        for name, values in sc.window.items():
            if values:
                sc.pending[METRIC_PREFIX + name] = float(np.mean(values))
        sc.window = defaultdict(list)

    def _log_pending(self, control: TrainerControl, step: int) -> None:
        """Log the queued metrics at ``step``; a tag already logged at this step is not logged again."""
        st, sc = self.state, self.state.scratch
        logs, sc.pending = sc.pending, {}
        if not logs:
            return
        logs[METRIC_PREFIX + "projecting"] = float(sc.projecting)
        logs[METRIC_PREFIX + "hvps_total"] = float(st.hvps_total)
        if step != self._log_step:
            self._log_step, self._log_tags = step, set()
        logs = {name: value for name, value in logs.items() if name not in self._log_tags}
        self._log_tags.update(logs)
        if logs:
            should_log = control.should_log  # Trainer.log's on_log clears it; keep the Trainer's own decision
            self.log(logs)
            control.should_log = should_log

    def summary(self) -> dict[str, Any]:
        """Settings and results of the subspace run (for the model card and recipes)."""
        return run_summary(self.args, self.state, self.operator.num_samples)

    def _write_tensorboard(self, step: int, *, header: bool) -> None:
        """The settings (again at the switch, with its step), and at train begin the layout and metric definitions."""
        if not distributed.is_main_process() or self.tensorboard is None:
            return
        for writer in self.tensorboard():
            if header:
                write_tensorboard_header(writer, self.summary(), self.args.subspace_extra_eigenvalues > 0)
            else:
                write_settings(writer, self.summary(), step)

    # -- Trainer hooks ---------------------------------------------------------------------------------------
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        self.follow_sharding()
        st, targs = self.state, self.args
        if not self._loaded and (st.last_refresh_step is not None or st.switch_step is not None):
            st.restart()  # train() again without a checkpoint: the step counter restarts, so does the schedule
        self._loaded = False
        st.scratch.clear()  # nothing of an abandoned (interrupted) run is logged or averaged
        self._log_step, self._log_tags, self._notes = None, set(), CostNotes()
        self._seen_grad = [False] * len(self.params)
        self.alignment_steps = alignment_interval(targs, state.max_steps, state.logging_steps)
        self._write_tensorboard(state.global_step, header=True)

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        step = state.global_step
        grads, norm = self._final_gradients(step, control, fp16=args.fp16)
        st, sc = self.state, self.state.scratch
        sc.projecting = self._is_switched(step)
        measure = self._measures_at(step)
        self._update_basis(step, projecting=sc.projecting, measure=measure)
        sc.full_grad = None
        if measure and st.basis is not None:
            sc.full_grad = self._measure(step, update_ema=True)
            self._maybe_auto_start(step)
        if sc.projecting and st.switch_step is None:
            self._switch(step)
        if measure and sc.projecting and not st.at_switch:
            st.at_switch = dict(st.last_measurement)
        sc.measured = measure
        if st.basis is None:
            return
        if math.isfinite(norm):
            # A parameter without a gradient (unused in this step) counts as a zero block of g.
            coeffs = sparse_coefficients(st.basis, self.params, grads)
            sc.window["chi_k_minibatch_grad"].append(fraction_in_span(coeffs, norm))
        if sc.projecting and self.args.subspace_target == "gradient":
            self._project_gradients(st.basis)
        sc.theta = copy_into(sc.theta, [local_part(p) for p in self.params])
        sc.theta_valid = True

    def _final_gradients(
        self, step: int, control: TrainerControl, *, fp16: bool
    ) -> tuple[list[torch.Tensor | None], float]:
        """The gradients at θ_t (SAM's perturbation undone) and their norm; stops on a non-finite gradient."""
        sam, sc = self.sam_optimizer(), self.state.scratch
        if sam is not None and sam.is_perturbed:
            sam.restore()  # the optimizer steps from θ with the gradient taken at θ + ε
        grads = sc.raw_grads if sc.raw_grads is not None else [p.grad for p in self.params]
        sc.raw_grads = None
        norm = vectors_norm([g for g in grads if g is not None], reduce=self._norm_reduce())
        if not math.isfinite(norm) and not fp16:  # fp16's loss scaler skips overflowing steps by itself
            self._log_pending(control, step)
            raise FloatingPointError(
                f"SubspaceTrainer: the minibatch gradient at step {step} is not finite (NaN or inf), so training "
                f"stops before this update is applied or saved; the last checkpoint is at or before step {step}. "
                "Check the training data for NaN/inf, or lower the learning rate."
            )
        for i, g in enumerate(grads):
            self._seen_grad[i] = self._seen_grad[i] or g is not None
        return grads, norm

    def _maybe_auto_start(self, step: int) -> None:
        """With ``subspace_auto_start``: switch once the χ_k EMA has reached its threshold (not before the start step)."""
        targs, st = self.args, self.state
        ema = st.ema.value
        if (
            targs.subspace_auto_start
            and targs.subspace_mode != "none"
            and st.switch_step is None
            and step >= targs.subspace_start_step
            and ema is not None
            and ema >= targs.subspace_auto_start_threshold
        ):
            st.scratch.projecting = True
            self._switch(step)
            logger.info("SubspaceTrainer: alignment EMA %.4f reached; projecting from step %d", ema, step)

    def _switch(self, step: int) -> None:
        self.state.switch_step = step
        self._record({"switch_step": step})
        self._write_tensorboard(step, header=False)

    def _project_gradients(self, basis: SubspaceBasis) -> None:
        """``g ← VVᵀg`` (dominant) or ``g − VVᵀg`` (bulk), in place.

        A parameter that has had a gradient before takes part with zeros (its projected gradient need not be zero);
        one that never had one stays without (its rows of an exact V are zero): it stays fixed.
        """
        full = [
            p.grad if p.grad is not None else torch.zeros_like(p) if seen else None
            for p, seen in zip(self.params, self._seen_grad)
        ]
        if self.args.subspace_mode == "dominant":
            basis.project_dominant_(full, self.params)
        else:
            basis.project_bulk_(full, self.params)
        for p, g in zip(self.params, full):
            if g is not None:
                p.grad = g

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        st, sc = self.state, self.state.scratch
        if not sc.theta_valid or sc.theta is None or st.basis is None:
            return
        params, old, basis = self.params, sc.theta, st.basis
        sc.theta_valid = False
        mode = self.args.subspace_mode
        with torch.no_grad():
            # Δ = θ_new − θ_t in a buffer reused every step (this is the hot path between refreshes).
            delta = sc.delta = copy_into(sc.delta, [local_part(p) for p in params])
            torch._foreach_sub_(delta, old)
            if sc.projecting and self.args.subspace_target == "update":
                fixed = [not seen for seen in self._seen_grad]
                coeffs = projected_update_(params, old, delta, basis, mode, fixed=fixed)  # type: ignore[arg-type]
                values = finite_values(coeffs, state.global_step)
                # χ_k of the applied update is 1 (Δ = V c) or 0 (Vᵀ(Δ − VVᵀΔ) = 0) by construction.
                nonzero = mode == "dominant" and any(v != 0.0 for v in values)
                sc.window["chi_k_update"].append(1.0 if nonzero else 0.0)
            else:
                coeffs = basis.coefficients(delta)
                finite_values(coeffs, state.global_step)
                norm = vectors_norm(delta, reduce=self._norm_reduce())
                sc.window["chi_k_update"].append(fraction_in_span(coeffs, norm))
            if sc.full_grad is not None:
                eta_dom, eta_bulk = effective_learning_rates(basis, delta, sc.full_grad)
                self._record({"effective_lr_dominant": eta_dom, "effective_lr_bulk": eta_bulk})
                sc.full_grad = None
        if sc.measured:
            # Logged while global_step is still t: the measurement is of θ_t, like the Trainer's loss log at step t.
            sc.measured = False
            self._log_pending(control, state.global_step)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        step = state.global_step
        last = control.should_training_stop or (state.max_steps > 0 and step >= state.max_steps)
        if last:
            # Before the TensorBoard writer closes at train end, so the card and the recipes report the end.
            self._final_measurement(step)
        if last or control.should_log:
            self._close_window()
            if last or not self._measures_at(step):  # else logged with the measurement at this step, in one record
                self._log_pending(control, step)

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if control.should_training_stop:  # early stopping decides here, after on_step_end: the run ends at this step
            self._final_measurement(state.global_step)
            self._close_window()
            self._log_pending(control, state.global_step)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        best = state.best_global_step
        if not (args.load_best_model_at_end and state.best_model_checkpoint and best is not None):
            return
        st = self.state
        if self.alignment_steps > 0 and st.basis is not None and st.last_measurement.get("step") != best:
            # The Trainer has loaded the best checkpoint: the summary (the card's "at the end") describes that model.
            # Not logged: the log's steps are past it, and its tags have values at the last step already.
            self._refresh(best)
            self._measure(best, update_ema=False)
            st.scratch.clear()
            logger.info("SubspaceTrainer: final loss and alignment measured on the best model (step %d)", best)
