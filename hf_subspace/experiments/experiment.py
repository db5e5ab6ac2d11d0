"""The paper's protocol as one runner: a shared unprojected prefix, then one branch per mode from the same state.

Song, Ahn & Yun (2025) train with SGD until the gradient has aligned with the dominant subspace, then continue from
that very state in several ways: plain SGD, Dom-SGD (each update projected onto the top-k Hessian eigenspace),
Bulk-SGD (that part removed), and full-batch GD for the SGD↔GD comparison. :func:`run_experiment` does exactly this
with :class:`~hf_subspace.trainer.SubspaceTrainer`, from a :class:`~.arguments.PreparedRecipe` (model and data), the
training arguments and an :class:`~.arguments.ExperimentPlan` (switch, branches, prefix):

1. the prefix trains unprojected (``subspace_mode="none"``) up to ``switch_step`` and saves a checkpoint (model,
   optimizer, scheduler, RNG states, subspace state) in ``output_dir/prefix/checkpoint-<switch_step>``. It steps on
   minibatches (``prefix="sgd"``, the default) or on the full-batch gradient (``prefix="gd"``: one batch of the whole
   training set per step, for the GD→SGD comparison);
2. every branch is a new ``SubspaceTrainer`` with ``subspace_start_step=switch_step`` that resumes from that
   checkpoint (so it continues from the same parameters, optimizer state and data order) and writes its own
   TensorBoard run (event files directly in its folder, so the run is named by the branch), model and model card in
   ``output_dir/<branch>/``. A branch is named by what it ran (:func:`~.branches.branch_name`): the unprojected
   minibatch branch after its optimizer (``sgd``, ``momentum``, ``adamw``, ...), the others after their mode;
3. rank 0 writes ``output_dir/summary.json`` and ``output_dir/figure.png`` (:func:`hf_subspace.experiments.plotting.plot_summary`).

The Hessian dataset (on which the Hessian, the "full-batch" gradient of χ_k and the logged loss are computed) is
chosen once and shared by the prefix and every branch: the recipe's ``hessian_dataset``, else the training set when
``args.hessian_num_samples >= len(train_dataset)``, else the seeded subset of ``hessian_num_samples`` training examples
that :class:`~hf_subspace.trainer.SubspaceTrainer` itself would take (:func:`hessian_subset`). The logged
``subspace/full_train_loss`` (and the losses in ``summary.json``) is the loss over that set, i.e. the full training
loss only when it is the whole training set; ``subspace/chi_k_full_grad`` is χ_k of the gradient over that set.

``summary.json``::

    {"recipe": str, "name": str, "k": int, "switch_step": int, "prefix_optimizer": "sgd" | "gd",
     "runs": {"<branch>": {"mode": str, "loss_at_switch": float, "final_loss": float,
                         "loss_curve": [[step, loss], ...], "chi_k_curve": [[step, chi], ...],
                         "mean_chi_k": float, "wall_time_s": float, "eval_accuracy": float (with an eval set), ...}},
     "world_size": int, "global_train_batch_size": int, "max_steps": int, "alignment_steps": int, "num_train": int,
     "hessian_num_samples": int, ...}

The curves include the shared prefix (steps < ``switch_step``), which is the same for every branch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from .. import distributed
from ..tensor_dataset import to_tensor_dataset
from ..trainer import SubspaceTrainer, hessian_subset_indices
from ..training_args import SubspaceTrainingArguments
from .arguments import ExperimentPlan, PreparedRecipe
from .branches import (
    BasisAudit,
    BranchProgress,
    StopAtStep,
    StopWhenAligned,
    TrajectoryRecorder,
    audit_summary,
    branch_curves,
    branch_name,
    card_description,
    clean_outputs,
    default_alignment_steps,
    first_trainer,
    format_results_table,
    make_trainer,
    optimizer_label,
    quiet_runs,
    recorded_arguments,
    value_at,
)
from .diagnostics import metric_curves
from .evaluation import accuracy_metrics
from .settings import (
    BRANCHES,
    FIGURE_NAME,
    PREFIX_DIR,
    PREFIXES,
    RECIPE_NAMES,
    SUMMARY_NAME,
    BranchSpec,
    ExperimentError,
    check_output_dir,
    check_resumed_options,
    resumed_options,
)

__all__ = [
    "ExperimentResult",
    "check_experiment",
    "hessian_subset",
    "run_experiment",
]

logger = logging.getLogger(__name__)

CallbackFactory = Callable[[str], Iterable[TrainerCallback]]


@dataclass
class ExperimentResult:
    """What :func:`run_experiment` produced.

    Attributes:
        output_dir: the experiment folder.
        summary: the content of ``summary.json``.
        summary_path: path of ``summary.json`` (``None`` on ranks other than 0).
        figure_path: path of the figure (``None`` on ranks other than 0 or with ``plot=False``).
        branch_dirs: ``{mode: folder}`` of each branch (model, model card, TensorBoard run).
        checkpoint: the prefix checkpoint every branch resumed from.
        trajectories: ``{"prefix" or mode: [[step, *parameters], ...]}`` when ``record_trajectory``; each branch's
            starts at the switch step, where the prefix's ends.
    """

    output_dir: Path
    summary: dict[str, Any]
    summary_path: Path | None
    figure_path: Path | None
    branch_dirs: dict[str, Path] = field(default_factory=dict)
    checkpoint: Path | None = None
    trajectories: dict[str, list[list[float]]] = field(default_factory=dict)

    def table(self) -> str:
        """The results table (branch, loss at switch, final loss, mean χ_k, ...)."""
        return format_results_table(self.summary)


# ----------------------------------------------------------------------------------------------- validation


def hessian_subset(train_dataset: Any, args: SubspaceTrainingArguments) -> Any:
    """The Hessian dataset :class:`~hf_subspace.trainer.SubspaceTrainer` takes when given none.

    ``train_dataset`` itself when ``args.hessian_num_samples >= len(train_dataset)``; otherwise the sorted, seeded
    choice of ``hessian_num_samples`` examples (seed ``args.hessian_seed``, default ``args.seed``), the trainer's rule.

    Returns:
        ``train_dataset``, ``train_dataset.select(indices)`` when it has ``select``, else a ``torch`` ``Subset``.
    """
    n = len(train_dataset)
    if args.hessian_num_samples >= n:
        return train_dataset
    indices = hessian_subset_indices(n, args).tolist()
    if hasattr(train_dataset, "select"):
        return train_dataset.select(indices)
    return torch.utils.data.Subset(train_dataset, indices)


def _full_batch(num_train: int, args: SubspaceTrainingArguments) -> dict[str, Any]:
    """Training-argument changes for full-batch steps: one batch of the whole training set per step and process."""
    return {
        "per_device_train_batch_size": math.ceil(num_train / max(1, args.world_size)),
        "gradient_accumulation_steps": 1,
    }


def check_experiment(args: SubspaceTrainingArguments, plan: ExperimentPlan) -> None:
    """The runner's gate on the training arguments, before any data is loaded or anything written.

    The plan checked itself when built (:class:`~.arguments.ExperimentPlan`); the rules on the model (``subspace_k``
    and extra eigenvalues below the number of parameters, ...) are :class:`~hf_subspace.SubspaceTrainer`'s, and
    :func:`run_experiment` builds the prefix's trainer before it writes anything.

    Raises:
        ExperimentError: with a message naming the offending option.
    """
    if not isinstance(args, SubspaceTrainingArguments):
        raise ExperimentError(f"args must be SubspaceTrainingArguments, got {type(args).__name__}.")
    if args.max_steps is None or args.max_steps <= 0:
        raise ExperimentError("the experiment needs --max_steps > 0 (the total number of steps of every branch).")
    if not 1 <= plan.switch_step < args.max_steps:
        raise ExperimentError(
            f"--switch_step={plan.switch_step} must be at least 1 and below --max_steps={args.max_steps} (the "
            "branches start at the switch step)."
        )
    if args.subspace_auto_start:
        raise ExperimentError(
            "--subspace_auto_start is not used by the experiment: the branches leave the shared prefix at "
            "--switch_step (or by --switch_rule ema). Remove --subspace_auto_start."
        )
    if args.subspace_mode != "none":
        raise ExperimentError(
            f"--subspace_mode={args.subspace_mode!r} is set by each branch; choose the branches with --modes "
            f"(e.g. --modes sgd,dominant,bulk) and leave --subspace_mode at 'none'."
        )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and args.world_size != launched:
        raise ExperimentError(
            f"launched as {launched} processes, but the training arguments see {args.world_size}: on a machine "
            "without GPUs pass --use_cpu true (the recipes do it by default), so the processes form one CPU (gloo) "
            "DDP group instead of each training alone."
        )
    if args.push_to_hub:
        raise ExperimentError(
            "--push_to_hub is not supported by the experiment (every branch would push to the same repository); "
            "push the branch folders output_dir/<mode> separately afterwards."
        )
    check_output_dir(args.output_dir, plan.overwrite_output_dir or plan.resume_experiment)


def _check_data(prepared: PreparedRecipe) -> None:
    train = prepared.train_dataset
    if train is None or len(train) == 0:
        raise ExperimentError("the training dataset is empty.")
    columns = getattr(train, "column_names", None)
    if isinstance(columns, list) and not {"labels", "label", "label_ids"} & set(columns):
        raise ExperimentError(
            f"the training dataset has no labels: no 'labels' or 'label' column among {columns}; the training loss "
            "(and so its Hessian) needs them. Add a label column (the recipes take --label_column for text data)."
        )
    if prepared.hessian_dataset is not None and len(prepared.hessian_dataset) == 0:
        raise ExperimentError("the Hessian dataset is empty.")


# ----------------------------------------------------------------------------------------------- trainers


def _branch_args(args: SubspaceTrainingArguments, output_dir: Path, **changes: Any) -> SubspaceTrainingArguments:
    return dataclasses.replace(args, output_dir=str(output_dir), **changes)


def _quietly(function: Callable[..., ExperimentResult]) -> Callable[..., ExperimentResult]:
    """Run ``function`` inside :func:`~hf_subspace.experiments.branches.quiet_runs`."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> ExperimentResult:
        with quiet_runs():
            return function(*args, **kwargs)

    return wrapper


# ----------------------------------------------------------------------------------------------- the protocol


@dataclass
class _Run:
    """What every run of one experiment shares: the plan, the arguments, the prepared data and the trainers'
    common keyword arguments."""

    plan: ExperimentPlan
    args: SubspaceTrainingArguments
    prepared: PreparedRecipe
    common: dict[str, Any]
    base: dict[str, Any]
    callbacks: CallbackFactory | None
    out: Path
    optimizer: str

    def run_callbacks(self, name: str) -> list[TrainerCallback]:
        return list(self.callbacks(name)) if self.callbacks is not None else []


@dataclass
class _Prefix:
    switch_step: int
    hvps: int
    history: list[dict[str, Any]]
    seconds: float
    checkpoint: Path
    trajectory: list[list[float]]
    args: SubspaceTrainingArguments
    crossed_at: int | None
    min_measurements: int | None


@_quietly
def run_experiment(
    prepared: PreparedRecipe | Callable[[], PreparedRecipe],
    args: SubspaceTrainingArguments,
    plan: ExperimentPlan,
    *,
    callbacks: CallbackFactory | None = None,
) -> ExperimentResult:
    """Run the shared prefix and every branch, then write ``summary.json`` and the figure (rank 0).

    Args:
        prepared: the model and data (:class:`~.arguments.PreparedRecipe`), or a function building them, called
            after the settings are checked (so a refused ``output_dir`` costs no data loading).
        args: the training settings of every run. ``max_steps`` is the last step of every branch; ``output_dir`` is
            the experiment folder. Left unset (``None``), ``subspace_alignment_steps`` becomes about ``max_steps/40``
            (dividing ``switch_step`` when possible). ``subspace_mode`` must stay ``"none"`` (the plan's ``modes``
            decide).
        plan: the protocol (:class:`~.arguments.ExperimentPlan`): ``switch_step`` (``1 <= switch_step <
            max_steps``; with ``switch_rule="ema"`` the cap of the paper's rule: the prefix measures χ_k of the
            full-batch gradient at every step and stops at the end of the first step t whose EMA reaches
            ``args.subspace_auto_start_threshold``, :class:`~.branches.StopWhenAligned`), the branches ``modes``
            (each named by what it ran, :func:`~.branches.branch_name`), the ``prefix`` optimizer (``"sgd"``, or
            ``"gd"``: one batch of the whole training set per step; minibatch branches then skip ``switch_step mod
            (batches per epoch)`` batches of their first epoch), ``basis_audit_steps`` (exact distances of the basis
            in use, :class:`~.branches.BasisAudit`), ``overwrite_output_dir``, ``plot`` and the names.
        callbacks: ``f(run_name) -> callbacks`` for each run (``"prefix"`` and every branch).

    Returns:
        An :class:`ExperimentResult` (the same summary on every rank).

    Raises:
        ExperimentError: for invalid settings, before anything is trained or written.
    """
    _ = args.device  # sets up the process group under torchrun / accelerate before anything else
    check_experiment(args, plan)
    if not isinstance(prepared, PreparedRecipe):
        prepared = prepared()
    _check_data(prepared)
    distributed.barrier()  # every rank has validated before rank 0 creates anything
    run = _setup(prepared, args, plan, callbacks)
    prefix = _run_prefix(run)
    runs: dict[str, dict[str, Any]] = {}
    trajectories = {PREFIX_DIR: prefix.trajectory} if prepared.record_trajectory else {}
    for mode in plan.branches:
        label = branch_name(mode, run.optimizer)
        runs[label], trajectory = _run_branch(run, prefix, mode, label)
        if trajectory is not None:
            trajectories[label] = trajectory
        distributed.barrier()
    summary = _summary(run, prefix, runs)
    result = ExperimentResult(
        run.out, summary, None, None, {n: run.out / n for n in runs}, prefix.checkpoint, trajectories
    )
    if distributed.is_main_process():
        result.summary_path = run.out / SUMMARY_NAME
        result.summary_path.write_text(json.dumps(summary, indent=2))
        if plan.plot:
            from .diagnostics import extra_figures
            from .plotting import plot_summary

            result.figure_path = plot_summary(summary, run.out / FIGURE_NAME)
            extra_figures(summary, run.out)  # sharpness.png (GD), spectrum.png (extra eigenvalues) when supported
            if prepared.after is not None:
                prepared.after(result)  # the recipe's own figures (the toy's trajectories)
        logger.info("hf-subspace %s: wrote %s", plan.recipe, result.summary_path)
    distributed.barrier()
    return result


def _setup(
    prepared: PreparedRecipe, args: SubspaceTrainingArguments, plan: ExperimentPlan, callbacks: CallbackFactory | None
) -> _Run:
    train_dataset = to_tensor_dataset(prepared.train_dataset)
    # One Hessian set for the prefix and every branch (the trainer's own default subset, chosen once here).
    given = prepared.hessian_dataset
    hessian_dataset = hessian_subset(train_dataset, args) if given is None else to_tensor_dataset(given)
    eval_dataset = prepared.eval_dataset
    if eval_dataset is not None:
        eval_dataset = to_tensor_dataset(eval_dataset) if len(eval_dataset) else None
    compute_metrics = prepared.compute_metrics
    if compute_metrics is None and eval_dataset is not None:
        with args.main_process_first(desc="loading the accuracy metric"):
            compute_metrics = accuracy_metrics()
    align = args.subspace_alignment_steps
    if align is None:
        align = default_alignment_steps(args.max_steps, plan.switch_step)
    common: dict[str, Any] = {
        "train_dataset": train_dataset,
        "eval_dataset": eval_dataset,
        "hessian_dataset": hessian_dataset,
        "data_collator": prepared.data_collator,
        "processing_class": prepared.processing_class,
        "compute_metrics": compute_metrics,
        "compute_loss_func": prepared.compute_loss_func,
    }
    optimizer = optimizer_label(args.optim, args.optim_args, args.sam_rho, getattr(args, "sam_adaptive", False))
    base = {"subspace_alignment_steps": align, "subspace_auto_start": False}
    return _Run(plan, args, prepared, common, base, callbacks, Path(args.output_dir), optimizer)


def _run_prefix(run: _Run) -> _Prefix:
    """The shared unprojected prefix, up to the switch; its checkpoint is what every branch resumes."""
    plan, args, out = run.plan, run.args, run.out
    logger.info(
        "hf-subspace %s: prefix (unprojected, %s) to step %d of %d",
        plan.recipe, PREFIXES[plan.prefix], plan.switch_step, args.max_steps,
    )  # fmt: skip
    changes = _full_batch(len(run.common["train_dataset"]), args) if plan.prefix == "gd" else {}
    prefix_args = _branch_args(
        args, out / PREFIX_DIR, subspace_mode="none", subspace_start_step=0, save_only_model=False,
        **changes, **run.base,
    )  # fmt: skip
    stopper: StopAtStep | StopWhenAligned = StopAtStep(plan.switch_step)
    if plan.switch_rule == "ema":
        # The paper's protocol: χ_k and its EMA at every prefix step (or every switch_measure_steps).
        prefix_args = dataclasses.replace(prefix_args, subspace_alignment_steps=plan.switch_measure_steps)
        stopper = StopWhenAligned(args.subspace_auto_start_threshold, plan.switch_step, args.subspace_ema_decay)
    minimum = getattr(stopper, "min_measurements", None)
    record_path = out / PREFIX_DIR / "prefix_record.json"
    if plan.resume_experiment and record_path.is_file():
        saved = json.loads(record_path.read_text())
        check_resumed_options(saved.get("options"), resumed_options(plan, args))
        logger.info(
            "hf-subspace %s: reusing the finished prefix (switch at step %d)", plan.recipe, saved["switch_step"]
        )
    else:
        saved = {**_train_prefix(run, prefix_args, stopper), "options": resumed_options(plan, args)}
        if distributed.is_main_process():
            record_path.write_text(json.dumps(saved, default=float))
    checkpoint = out / PREFIX_DIR / f"checkpoint-{saved['switch_step']}"
    prefix = _Prefix(
        saved["switch_step"], saved["hvps"], saved["history"], saved["seconds"], checkpoint, saved["trajectory"],
        prefix_args, saved["crossed_at"], minimum,
    )  # fmt: skip
    distributed.barrier()  # the checkpoint is complete before any rank resumes from it
    if not checkpoint.is_dir():
        raise RuntimeError(f"the prefix did not save its checkpoint {checkpoint}; was training stopped early?")
    return prefix


def _train_prefix(
    run: _Run, prefix_args: SubspaceTrainingArguments, stopper: StopAtStep | StopWhenAligned
) -> dict[str, Any]:
    """Train the prefix; its record (``prefix/prefix_record.json``, what a resumed experiment reuses)."""
    recorder = TrajectoryRecorder() if run.prepared.record_trajectory else None
    callbacks = [stopper, *([recorder] if recorder else []), *run.run_callbacks(PREFIX_DIR)]
    start = time.perf_counter()
    trainer = first_trainer(run.prepared.model, prefix_args, run.common, callbacks)
    if distributed.is_main_process():
        run.out.mkdir(parents=True, exist_ok=True)
        if run.plan.overwrite_output_dir and not run.plan.resume_experiment:
            clean_outputs(run.out, [branch_name(mode, run.optimizer) for mode in run.plan.branches])
    distributed.barrier()
    trainer.train()
    saved = {
        "switch_step": trainer.state.global_step,
        "history": list(trainer.state.log_history),
        "seconds": time.perf_counter() - start,
        "hvps": trainer.subspace_state.hvps_total,
        "crossed_at": getattr(stopper, "crossed_at", None),
        "trajectory": [[s, *p] for s, p in zip(recorder.steps, recorder.points)] if recorder else [],
    }
    del trainer
    return saved


def _run_branch(run: _Run, prefix: _Prefix, mode: str, label: str) -> tuple[dict[str, Any], list[list[float]] | None]:
    """One branch from the prefix checkpoint: trains, evaluates, saves the model, its card and its record."""
    plan, args, switch_step = run.plan, run.args, prefix.switch_step
    spec = BRANCHES[mode]
    done = run.out / label / "branch_record.json"
    if plan.resume_experiment and done.is_file():
        logger.info("hf-subspace %s: reusing the finished branch %s", plan.title, label)
        return json.loads(done.read_text()), None
    logger.info("hf-subspace %s: branch %s (%s) from step %d", plan.title, label, spec.description, switch_step)
    changes: dict[str, Any] = {"subspace_mode": spec.subspace_mode, "subspace_start_step": switch_step, **run.base}
    if spec.full_batch:
        changes.update(_full_batch(len(run.common["train_dataset"]), args))
    recorder = TrajectoryRecorder() if run.prepared.record_trajectory else None
    start = time.perf_counter()
    trainer = make_trainer(
        run.prepared.model,
        _branch_args(args, run.out / label, **changes),
        label,
        run.common,
        [*([recorder] if recorder else []), *run.run_callbacks(label)],
    )
    audit = BasisAudit(trainer, plan.basis_audit_steps)
    trainer.add_callback(audit)  # after the subspace callback: it sees the basis each step projects onto
    resumable = plan.resume_experiment and (run.out / label).is_dir()
    latest = get_last_checkpoint(str(run.out / label)) if resumable else None
    progress = BranchProgress(audit, latest, start)  # the audits and seconds before `latest`, kept in checkpoints
    trainer.add_callback(progress)
    trainer.train(resume_from_checkpoint=latest or str(prefix.checkpoint))
    record = _run_record(prefix.history, trainer.state.log_history, switch_step, spec, progress.seconds)
    record["hvps_branch"] = trainer.subspace_state.hvps_total - prefix.hvps  # the prefix's are checkpointed too
    record["basis_error_audit"] = audit_summary(audit.records)
    record["mode"] = mode
    if run.common["eval_dataset"] is not None:
        metrics = trainer.evaluate()
        record.update({k: float(v) for k, v in metrics.items() if k in ("eval_accuracy", "eval_loss")})
    trainer.save_model()
    if trainer.is_world_process_zero():
        _write_card_and_record(trainer, run, mode, label, switch_step)
        done.write_text(json.dumps(record, default=float))
    trajectory = None
    if recorder is not None:
        trajectory = [[s, *p] for s, p in zip(recorder.steps, recorder.points) if s >= switch_step]
    return record, trajectory


def _write_card_and_record(trainer: SubspaceTrainer, run: _Run, mode: str, label: str, switch_step: int) -> None:
    """The branch's model card and, for a registered recipe, ``hf_subspace_experiment.json`` (its arguments, so
    ``hf-subspace spectrum`` can rebuild the data)."""
    plan, prepared = run.plan, run.prepared
    trainer.create_model_card(
        model_name=f"{plan.title}-{label}",
        dataset_tags=list(prepared.dataset_tags or []) or None,
        tags=[plan.recipe, f"subspace-{mode}"],
        description=card_description(plan, prepared),
    )
    if plan.recipe in RECIPE_NAMES:
        info = {"recipe": plan.recipe, "name": plan.title, "mode": mode, "branch": label, "switch_step": switch_step}
        info.update({"recipe_args": recorded_arguments(plan, _loss_type(run)), "loss": prepared.loss})
        (run.out / label / "hf_subspace_experiment.json").write_text(json.dumps(info, indent=2, default=str))


def _loss_type(run: _Run) -> str | None:
    """The loss trained: the recipe's ``--loss_type``, else the model's own (``config.loss_type``), else ``None``."""
    given = getattr(run.plan, "loss_type", None)
    model = run.prepared.model
    return given or getattr(getattr(model, "config", None), "loss_type", None)


def _summary(run: _Run, prefix: _Prefix, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    plan, args, prepared = run.plan, run.args, run.prepared
    ema = plan.switch_rule == "ema"
    return {
        "recipe": plan.recipe,
        "name": plan.title,
        "k": args.subspace_k,
        "switch_step": prefix.switch_step,
        "seed": args.seed,
        "switch_rule": {
            "rule": plan.switch_rule,
            "cap": plan.switch_step,
            "threshold": args.subspace_auto_start_threshold if ema else None,
            "ema_decay": args.subspace_ema_decay if ema else None,
            "crossed_at": prefix.crossed_at,
            "min_measurements": prefix.min_measurements,
        },
        "prefix_optimizer": plan.prefix,
        "runs": runs,
        "dataset": prepared.dataset_name,
        "max_steps": args.max_steps,
        "modes": plan.branches,
        "world_size": args.world_size,
        "alignment_steps": run.base["subspace_alignment_steps"],
        "refresh_steps": args.subspace_refresh_steps,
        "basis_tol": args.subspace_basis_tol,
        "learning_rate": args.learning_rate,
        "optimizer": str(getattr(args.optim, "value", args.optim)),
        "optim_args": args.optim_args,
        "sam_rho": args.sam_rho,
        "optimizer_label": run.optimizer,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "global_train_batch_size": args.per_device_train_batch_size
        * args.world_size
        * args.gradient_accumulation_steps,
        "prefix_per_device_train_batch_size": prefix.args.per_device_train_batch_size,
        "num_train": len(run.common["train_dataset"]),
        "hessian_num_samples": len(run.common["hessian_dataset"]),
        "prefix_wall_time_s": prefix.seconds,
        "prefix_hvps": prefix.hvps,
        "dataset_description": prepared.dataset_description,
        "loss": prepared.loss,
        "loss_type": _loss_type(run),
        **prepared.extras,
    }


def _run_record(
    prefix_history: list[dict[str, Any]],
    branch_history: list[dict[str, Any]],
    switch_step: int,
    spec: BranchSpec,
    seconds: float,
) -> dict[str, Any]:
    loss_curve, chi_curve = branch_curves(prefix_history, branch_history, switch_step)
    after = [c for s, c in chi_curve if s > switch_step]
    at_switch = value_at(loss_curve, switch_step)
    return {
        "loss_at_switch": at_switch,
        "final_loss": loss_curve[-1][1] if loss_curve else None,
        "loss_curve": loss_curve,
        "chi_k_curve": chi_curve,
        "mean_chi_k": float(np.mean(after)) if after else None,
        "chi_k_at_switch": value_at(chi_curve, switch_step),
        "final_chi_k": chi_curve[-1][1] if chi_curve else None,
        "subspace_mode": spec.subspace_mode,
        "full_batch": spec.full_batch,
        "wall_time_s": seconds,
        # eigenvalues, eigengap, effective learning rates (prefix, then branch): :mod:`.diagnostics`
        "curves": metric_curves(prefix_history, branch_history, switch_step),
    }
