"""`SubspaceTrainer`: a drop-in `transformers.Trainer` with dominant- or bulk-projected updates.

Per optimizer step t (the Trainer's own order: backward → clipping → ``on_pre_optimizer_step`` → ``optimizer.step()``
→ ``on_optimizer_step``):

1. schedule: is projection on (``subspace_start_step`` reached, or the χ_k EMA crossed its threshold)? Is a basis
   refresh due (every ``subspace_refresh_steps``), or an alignment measurement (every ``subspace_alignment_steps``)?
2. refresh: the top-k eigenvectors of the Hessian of the trainer's own loss over the fixed Hessian dataset at θ_t,
   warm-started from the previous basis;
3. the optimizer steps on the raw gradient (or, with ``subspace_target="gradient"``, on Pg / g − Pg);
4. with ``subspace_target="update"`` the change Δ = θ_new − θ_t is replaced: θ_t + PΔ (dominant) or θ_new − PΔ
   (bulk), so the optimizer state is untouched (the paper's Dom-/Bulk-SGD rule, for any optimizer).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from . import distributed
from ._params import select_parameters
from .eigensolvers import top_eigenpairs
from .hessian import HessianOperator
from .metrics import METRIC_PREFIX, AlignmentEMA, custom_scalar_layout, effective_learning_rates
from .optim import SAM
from .subspace import SubspaceBasis, fraction_in_span, vectors_norm
from .training_args import SubspaceTrainingArguments

__all__ = ["SUBSPACE_STATE_NAME", "SubspaceTrainer", "hessian_subset_indices"]

logger = logging.getLogger(__name__)

SUBSPACE_STATE_NAME = "subspace_state.pt"


def hessian_subset_indices(num_examples: int, args: SubspaceTrainingArguments) -> np.ndarray:
    """Indices of the default Hessian dataset among ``num_examples`` training examples (sorted).

    All of them when ``args.hessian_num_samples >= num_examples``; otherwise a choice without replacement of
    ``hessian_num_samples`` drawn with seed ``args.hessian_seed`` (default ``args.seed``), so every run, resume and
    process of an experiment computes the Hessian on the same examples.
    """
    if args.hessian_num_samples >= num_examples:
        return np.arange(num_examples)
    seed = args.seed if args.hessian_seed is None else args.hessian_seed
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_examples, size=args.hessian_num_samples, replace=False))


class SubspaceTrainer(Trainer):
    """`transformers.Trainer` that projects updates onto (or out of) the dominant Hessian subspace.

    Args:
        *args, **kwargs: as for `transformers.Trainer`; ``args`` must be :class:`SubspaceTrainingArguments`.
        hessian_dataset: dataset on which the Hessian, full-batch gradient and full training loss are computed.
            Default: a fixed subset of ``train_dataset`` of ``hessian_num_samples`` examples chosen with
            ``hessian_seed``. Each process takes its own contiguous shard; products are reduced across processes.

    Raises:
        ValueError: at construction (before any training) for invalid subspace settings, e.g. ``subspace_k`` not
            below the number of covered parameters, or a Hessian dataset without labels.
    """

    args: SubspaceTrainingArguments

    def __init__(self, *args: Any, hessian_dataset: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, SubspaceTrainingArguments):
            raise TypeError(
                f"SubspaceTrainer needs SubspaceTrainingArguments, got {type(self.args).__name__}; "
                "replace TrainingArguments(...) by SubspaceTrainingArguments(...)."
            )
        if self.model is None:
            raise ValueError("SubspaceTrainer needs a model (model_init is not supported).")
        self.hessian_dataset = hessian_dataset
        named = select_parameters(self.model, self.args.subspace_parameter_filter)
        self.subspace_param_names = [n for n, _ in named]
        self.subspace_params = [p for _, p in named]
        dim = sum(p.numel() for p in self.subspace_params)
        num_vectors = self.args.subspace_k + self.args.subspace_extra_eigenvalues
        if num_vectors >= dim:
            raise ValueError(
                f"subspace_k={self.args.subspace_k} (+ subspace_extra_eigenvalues="
                f"{self.args.subspace_extra_eigenvalues}) must be smaller than the number of covered parameters "
                f"d={dim}; lower subspace_k or widen subspace_parameter_filter."
            )
        self.hessian_operator = HessianOperator(
            self.model,
            self._hessian_batches(),
            self._hessian_loss,
            params=self.subspace_params,
            progress=self.args.subspace_progress,
        )
        self.subspace_state = _SubspaceState(ema=AlignmentEMA(decay=self.args.subspace_ema_decay))
        self._subspace_callback = _SubspaceCallback(self)
        self.add_callback(self._subspace_callback)

    # -- the Hessian dataset and loss -------------------------------------------------------------------------
    def _hessian_batches(self) -> list[Any]:
        args = self.args
        dataset = self.hessian_dataset
        if dataset is None:
            dataset = self.train_dataset
            if dataset is None:
                raise ValueError("SubspaceTrainer needs a train_dataset or a hessian_dataset to build the Hessian.")
            try:
                n = len(dataset)
            except TypeError:
                raise ValueError(
                    "The train dataset has no length (an IterableDataset); pass hessian_dataset= with a fixed set of "
                    "examples for the Hessian."
                ) from None
            indices = hessian_subset_indices(n, args)
        else:
            indices = np.arange(len(dataset))
        if hasattr(dataset, "column_names"):
            if "labels" not in dataset.column_names and "label" not in dataset.column_names:
                raise ValueError(
                    f"The Hessian dataset has no 'labels' column (columns: {dataset.column_names}); the Hessian is of "
                    "the training loss, which needs labels. Pass hessian_dataset= with labels."
                )
            dataset = self._remove_unused_columns(dataset, description="hessian")
        # Each rank takes a contiguous shard; products are summed across ranks weighted by sample counts.
        shard = np.array_split(indices, distributed.world_size())[distributed.rank()]
        size = args.hessian_batch_size
        collator = self.data_collator
        # Built without a DataLoader: iterating one draws from the global RNG and would change the training run.
        return [collator([dataset[int(i)] for i in shard[s : s + size]]) for s in range(0, len(shard), size)]

    def _hessian_loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        # The trainer's own loss (custom compute_loss / compute_loss_func / label smoothing included). Called without
        # num_items_in_batch so the cross-device token averaging factor of transformers 5 is not applied.
        loss = self.compute_loss(model, dict(batch))
        if isinstance(loss, tuple):
            loss = loss[0]
        return loss.mean() if loss.dim() else loss

    # -- optimizers ------------------------------------------------------------------------------------------
    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The Trainer's optimizer, wrapped in :class:`~hf_subspace.optim.SAM` when ``sam_rho > 0``."""
        if self.optimizer is not None or self.args.sam_rho <= 0:
            return super().create_optimizer(model)
        base = super().create_optimizer(model)
        base_cls, base_defaults = type(base), dict(base.defaults)
        self.optimizer = SAM(
            base.param_groups,
            base_optimizer=lambda groups: base_cls(groups, **base_defaults),
            rho=self.args.sam_rho,
            adaptive=self.args.sam_adaptive,
        )
        return self.optimizer

    def sam_optimizer(self) -> SAM | None:
        """The SAM instance behind the (possibly accelerate-wrapped) optimizer, if any."""
        opt = self.optimizer
        while opt is not None and not isinstance(opt, SAM):
            opt = getattr(opt, "optimizer", None)
        return opt

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        sam = self.sam_optimizer()
        if sam is None:
            return super().training_step(model, inputs, num_items_in_batch)
        # SAM: gradient at θ (kept for the alignment metrics), ascent to θ + ε, gradient there. θ is restored in
        # on_pre_optimizer_step, so the optimizer steps from θ with the perturbed gradient.
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.subspace_state.basis is not None:
            self.subspace_state.raw_grads = [
                None if p.grad is None else p.grad.detach().clone() for p in self.subspace_params
            ]
        sam.first_step(zero_grad=True)
        super().training_step(model, inputs, num_items_in_batch)
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # The Trainer's periodic training log carries the subspace metrics gathered since the last one.
        if "loss" in logs:
            logs = {**logs, **self._subspace_callback.flush()}
        super().log(logs, start_time)

    # -- checkpoints -----------------------------------------------------------------------------------------
    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            if os.path.isdir(folder):
                torch.save(self.subspace_state.state_dict(), os.path.join(folder, SUBSPACE_STATE_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, SUBSPACE_STATE_NAME)
        if os.path.isfile(path):
            device = self.subspace_params[0].device
            state = torch.load(path, map_location=device, weights_only=False)
            self.subspace_state.load_state_dict(state)
        else:
            logger.warning(
                "%s has no %s: the subspace state starts afresh", resume_from_checkpoint, SUBSPACE_STATE_NAME
            )

    # -- model card ------------------------------------------------------------------------------------------
    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
        *,
        figures: list[tuple[str, str]] | None = None,
        description: str = "",
        notes: str = "",
    ) -> None:
        """Write ``output_dir/README.md``: the hf-subspace model card (Hub format, tagged ``hf-subspace``).

        Takes the arguments of `Trainer.create_model_card`, plus ``figures`` (``(path relative to output_dir,
        alt text)`` pairs), a ``description`` and ``notes`` (e.g. how a run differs from the paper's setup).
        """
        if not self.is_world_process_zero():
            return
        from .modelcard import CardInfo, as_list, render_model_card

        model = self.model
        config = getattr(model, "config", None)
        args = self.args
        evals = {}
        for record in self.state.log_history:
            evals.update({k: v for k, v in record.items() if k.startswith("eval_") and isinstance(v, (int, float))})
        for key in ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second"):
            evals.pop(key, None)
        hyper = {
            "optimizer": str(getattr(args.optim, "value", args.optim))
            + (f" ({args.optim_args})" if args.optim_args else ""),
            "learning rate": args.learning_rate,
            "learning-rate schedule": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
            "train batch size (per device)": args.per_device_train_batch_size,
            "gradient accumulation steps": args.gradient_accumulation_steps,
            "processes": args.world_size,
            "optimizer steps": self.state.global_step,
            "weight decay": args.weight_decay,
            "gradient clipping": args.max_grad_norm or "off",
            "precision": "bf16 mixed" if args.bf16 else "fp16 mixed" if args.fp16 else "fp32",
            "seed": args.seed,
        }
        info = CardInfo(
            model_name=model_name or os.path.basename(os.path.normpath(args.output_dir)),
            architecture=(config.architectures or [type(model).__name__])[0]
            if config is not None and getattr(config, "architectures", None)
            else type(model).__name__,
            num_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
            base_model=finetuned_from
            or (getattr(config, "_name_or_path", None) or None if config is not None else None),
            datasets=as_list(dataset) or as_list(dataset_tags),
            hyperparameters=hyper,
            eval_metrics=evals,
            figures=list(figures or []),
            tags=as_list(tags) + as_list(tasks),
            license=license,
            language=language,
            description=description,
            notes=notes,
        )
        if info.base_model and os.path.isdir(info.base_model):
            info.base_model = None  # a local folder is not a Hub id
        card = render_model_card(self.subspace_summary(), info)
        os.makedirs(args.output_dir, exist_ok=True)
        card.save(os.path.join(args.output_dir, "README.md"))

    def subspace_summary(self) -> dict[str, Any]:
        """Settings and results of the subspace run (for the model card and recipes)."""
        args, st = self.args, self.subspace_state
        return {
            "mode": args.subspace_mode,
            "k": args.subspace_k,
            "start_step": args.subspace_start_step,
            "auto_start": args.subspace_auto_start,
            "switch_step": st.switch_step,
            "refresh_steps": args.subspace_refresh_steps,
            "target": args.subspace_target,
            "solver": args.subspace_solver,
            "hessian_num_samples": self.hessian_operator.num_samples,
            "parameter_filter": args.subspace_parameter_filter,
            "sam_rho": args.sam_rho,
            "at_switch": st.at_switch,
            "last": st.last_measurement,
        }


class _SubspaceState:
    """What the schedule needs across steps; saved in each checkpoint so a resumed run continues exactly."""

    def __init__(self, ema: AlignmentEMA) -> None:
        self.basis: SubspaceBasis | None = None
        self.warm_start: torch.Tensor | None = None
        self.extra_eigenvalues: torch.Tensor | None = None
        self.last_refresh_step: int | None = None
        self.switch_step: int | None = None
        self.ema = ema
        self.at_switch: dict[str, float] = {}
        self.last_measurement: dict[str, float] = {}
        # per-step, not checkpointed
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
            "version": 1,
            "basis": None if self.basis is None else self.basis.state_dict(),
            "warm_start": self.warm_start,
            "extra_eigenvalues": self.extra_eigenvalues,
            "last_refresh_step": self.last_refresh_step,
            "switch_step": self.switch_step,
            "ema": self.ema.state_dict(),
            "at_switch": self.at_switch,
            "last_measurement": self.last_measurement,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.basis = None if state["basis"] is None else SubspaceBasis.from_state_dict(state["basis"])
        self.warm_start = state["warm_start"]
        self.extra_eigenvalues = state["extra_eigenvalues"]
        self.last_refresh_step = state["last_refresh_step"]
        self.switch_step = state["switch_step"]
        self.ema.load_state_dict(state["ema"])
        self.at_switch = dict(state["at_switch"])
        self.last_measurement = dict(state["last_measurement"])


class _SubspaceCallback(TrainerCallback):
    """The per-step schedule, run by the Trainer's callback hooks (it holds the trainer: callbacks get no handle)."""

    def __init__(self, trainer: SubspaceTrainer) -> None:
        self.trainer = trainer

    # -- helpers ---------------------------------------------------------------------------------------------
    @property
    def st(self) -> _SubspaceState:
        return self.trainer.subspace_state

    def _is_switched(self, step: int) -> bool:
        args = self.trainer.args
        if args.subspace_mode == "none":
            return False
        if args.subspace_auto_start:
            return self.st.switch_step is not None and step >= self.st.switch_step
        return step >= args.subspace_start_step

    def _refresh(self, step: int) -> None:
        trainer, args, st = self.trainer, self.trainer.args, self.st
        num = args.subspace_k + args.subspace_extra_eigenvalues
        method = args.subspace_solver
        if method == "auto":
            method = "lobpcg" if st.warm_start is not None else "lanczos"
        start = time.perf_counter()
        result = top_eigenpairs(
            trainer.hessian_operator,
            num,
            method=method,
            init=st.warm_start if method == "lobpcg" else None,
            tol=args.subspace_solver_tol,
            max_iters=args.subspace_solver_max_iters,
            seed=args.seed + step,
            progress=args.subspace_progress,
        )
        seconds = time.perf_counter() - start
        k = args.subspace_k
        vectors = result.eigenvectors
        basis = SubspaceBasis(vectors[:, :k] if num > k else vectors, result.eigenvalues[:k])
        out = st.pending
        if st.basis is not None:
            out[METRIC_PREFIX + "basis_overlap"] = basis.overlap(st.basis)
        st.basis, st.warm_start, st.last_refresh_step = basis, vectors, step
        st.extra_eigenvalues = result.eigenvalues[k:]
        for i, value in enumerate(result.eigenvalues.tolist(), start=1):
            name = f"eigenvalue_top_{i}" if i <= k else f"eigenvalue_next_{i}"
            out[METRIC_PREFIX + name] = value
        out[METRIC_PREFIX + "solver_hvps"] = result.num_matvecs
        out[METRIC_PREFIX + "solver_seconds"] = seconds
        out[METRIC_PREFIX + "solver_max_residual"] = float(result.residuals.max().item())
        out[METRIC_PREFIX + "solver_converged"] = float(result.converged)

    # -- Trainer hooks ---------------------------------------------------------------------------------------
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if not distributed.is_main_process():
            return
        from transformers.integrations import TensorBoardCallback

        for cb in self.trainer.callback_handler.callbacks:
            writer = getattr(cb, "tb_writer", None) if isinstance(cb, TensorBoardCallback) else None
            if writer is not None and hasattr(writer, "add_custom_scalars"):
                writer.add_custom_scalars(custom_scalar_layout())
                if hasattr(writer, "add_text"):
                    writer.add_text("subspace/settings", json.dumps(self.trainer.subspace_summary(), default=str))

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        trainer, st = self.trainer, self.st
        targs = trainer.args
        step = state.global_step
        sam = trainer.sam_optimizer()
        if sam is not None and sam.is_perturbed:
            sam.restore()  # the optimizer steps from θ with the gradient taken at θ + ε
        align_every = targs.alignment_steps
        st.projecting = self._is_switched(step)
        # Measure every `align_every` steps, and at the switch itself (the card reports loss and χ_k there).
        switching_now = st.projecting and st.switch_step is None
        measure = align_every > 0 and (step % align_every == 0 or switching_now)
        if measure or st.projecting:
            stale = st.last_refresh_step is None or step - st.last_refresh_step >= targs.subspace_refresh_steps
            fresh_for_measure = not st.projecting and measure and st.last_refresh_step != step
            if st.basis is None or stale or fresh_for_measure:
                self._refresh(step)
        st.full_grad = None
        if measure and st.basis is not None:
            loss, grad = trainer.hessian_operator.loss_and_gradient()
            chi = st.basis.dominant_fraction(grad)
            ema = st.ema.update(chi)
            st.full_grad = grad
            st.pending[METRIC_PREFIX + "full_train_loss"] = loss
            st.pending[METRIC_PREFIX + "chi_k_full_grad"] = chi
            st.pending[METRIC_PREFIX + "chi_k_full_grad_ema"] = ema
            st.last_measurement = {"step": step, "full_train_loss": loss, "chi_k_full_grad": chi}
            if (
                targs.subspace_auto_start
                and targs.subspace_mode != "none"
                and st.switch_step is None
                and step >= targs.subspace_start_step
                and ema >= targs.subspace_auto_start_threshold
            ):
                st.switch_step = step
                st.projecting = True
                st.pending[METRIC_PREFIX + "switch_step"] = step
                logger.info("SubspaceTrainer: alignment EMA %.4f reached; projecting from step %d", ema, step)
        if st.projecting and st.switch_step is None:
            st.switch_step = step
            st.pending[METRIC_PREFIX + "switch_step"] = step
        if measure and st.projecting and not st.at_switch:
            st.at_switch = dict(st.last_measurement)
        st.measured = measure
        basis = st.basis
        if basis is None:
            return
        grads = st.raw_grads if st.raw_grads is not None else [p.grad for p in trainer.subspace_params]
        st.raw_grads = None
        if all(g is not None for g in grads):
            st.window["chi_k_minibatch_grad"].append(basis.dominant_fraction(grads))  # type: ignore[arg-type]
        if st.projecting and targs.subspace_target == "gradient":
            # A parameter without a gradient takes part with zeros: its projected gradient need not be zero.
            full = [p.grad if p.grad is not None else torch.zeros_like(p) for p in trainer.subspace_params]
            (basis.project_dominant_ if targs.subspace_mode == "dominant" else basis.project_bulk_)(full)
            for p, g in zip(trainer.subspace_params, full):
                p.grad = g
        st.theta_old = _copy_into(st.theta_buffer, trainer.subspace_params)
        st.theta_buffer = st.theta_old

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        trainer, st = self.trainer, self.st
        if st.theta_old is None or st.basis is None:
            return
        params, old, basis = trainer.subspace_params, st.theta_old, st.basis
        st.theta_old = None
        mode = trainer.args.subspace_mode
        with torch.no_grad():
            # Δ = θ_new − θ_t in a buffer reused every step (this is the hot path between refreshes).
            delta = _copy_into(st.delta_buffer, params)
            st.delta_buffer = delta
            torch._foreach_sub_(delta, old)
            coeffs = basis.coefficients(delta)
            if st.projecting and trainer.args.subspace_target == "update":
                for block, p, o, d in zip(basis.row_blocks(params), params, old, delta):
                    dom = (block @ coeffs).reshape(p.shape).to(p.dtype)
                    if mode == "dominant":
                        p.copy_(o).add_(dom)  # θ_t + PΔ
                        d.copy_(dom)
                    else:
                        p.sub_(dom)  # θ_new − PΔ
                        d.sub_(dom)
                # χ_k of the applied update is 1 (Δ = V c) or 0 (Vᵀ(Δ − VVᵀΔ) = 0) by construction.
                nonzero = mode == "dominant" and bool(torch.any(coeffs != 0).item())
                st.window["chi_k_update"].append(1.0 if nonzero else 0.0)
            else:
                st.window["chi_k_update"].append(fraction_in_span(coeffs, vectors_norm(delta)))
            if st.full_grad is not None:
                eta_dom, eta_bulk = effective_learning_rates(basis, delta, st.full_grad)
                st.pending[METRIC_PREFIX + "effective_lr_dominant"] = eta_dom
                st.pending[METRIC_PREFIX + "effective_lr_bulk"] = eta_bulk
                st.full_grad = None
        if st.measured:
            # Logged while global_step is still t: the measurement is of θ_t, like the Trainer's loss log at step t.
            st.measured = False
            trainer.log(self.flush())

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        # A final measurement at the last step (before the TensorBoard writer closes at train end), with a basis
        # refreshed at the final parameters, so the card and the recipes report loss and alignment at the end.
        trainer, st = self.trainer, self.st
        last = control.should_training_stop or (state.max_steps > 0 and state.global_step >= state.max_steps)
        if not last or trainer.args.alignment_steps <= 0 or st.basis is None:
            return
        step = state.global_step
        if st.last_refresh_step != step:
            self._refresh(step)
        loss, grad = trainer.hessian_operator.loss_and_gradient()
        chi = st.basis.dominant_fraction(grad)
        st.last_measurement = {"step": step, "full_train_loss": loss, "chi_k_full_grad": chi}
        st.pending[METRIC_PREFIX + "full_train_loss"] = loss
        st.pending[METRIC_PREFIX + "chi_k_full_grad"] = chi
        # Logged through Trainer.log, which leaves the Trainer's own should_log decision for this step intact.
        should_log = control.should_log
        trainer.log(self.flush())
        control.should_log = should_log

    def flush(self) -> dict[str, float]:
        """Pending metrics plus window means of the per-step ones; empties both."""
        st = self.st
        logs = dict(st.pending)
        for name, values in st.window.items():
            if values:
                logs[METRIC_PREFIX + name] = float(np.mean(values))
        if logs:
            logs[METRIC_PREFIX + "projecting"] = float(st.projecting)
        st.pending, st.window = {}, defaultdict(list)
        return logs


def _copy_into(buffer: list[torch.Tensor] | None, params: list[torch.Tensor]) -> list[torch.Tensor]:
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
