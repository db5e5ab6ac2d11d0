"""The paper's protocol as one runner: a shared unprojected prefix, then one branch per mode from the same state.

Song, Ahn & Yun (2025) train with SGD until the gradient has aligned with the dominant subspace, then continue from
that very state in several ways: plain SGD, Dom-SGD (each update projected onto the top-k Hessian eigenspace),
Bulk-SGD (that part removed), and full-batch GD for the SGD↔GD comparison. :func:`run_experiment` does exactly this
with :class:`~hf_subspace.trainer.SubspaceTrainer`:

1. the prefix trains unprojected (``subspace_mode="none"``) up to ``switch_step`` and saves a checkpoint (model,
   optimizer, scheduler, RNG states, subspace state) in ``output_dir/prefix/checkpoint-<switch_step>``. It steps on
   minibatches (``prefix="sgd"``, the default) or on the full-batch gradient (``prefix="gd"``: one batch of the whole
   training set per step, for the GD→SGD comparison);
2. every branch is a new ``SubspaceTrainer`` with ``subspace_start_step=switch_step`` that resumes from that
   checkpoint (so it continues from the same parameters, optimizer state and data order) and writes its own
   TensorBoard run, model and model card in ``output_dir/<mode>/``;
3. rank 0 writes ``output_dir/summary.json`` and ``output_dir/figure.png`` (:func:`hf_subspace.plotting.plot_summary`).

The Hessian dataset (on which the Hessian, the "full-batch" gradient of χ_k and the logged loss are computed) is
chosen once and shared by the prefix and every branch: the ``hessian_dataset`` given, else the training set when
``args.hessian_num_samples >= len(train_dataset)``, else the seeded subset of ``hessian_num_samples`` training examples
that :class:`~hf_subspace.trainer.SubspaceTrainer` itself would take (:func:`hessian_subset`). The logged
``subspace/full_train_loss`` (and the losses in ``summary.json``) is the loss over that set, i.e. the full training
loss only when it is the whole training set; ``subspace/chi_k_full_grad`` is χ_k of the gradient over that set.

``summary.json``::

    {"recipe": str, "k": int, "switch_step": int, "prefix_optimizer": "sgd" | "gd",
     "runs": {"<mode>": {"loss_at_switch": float, "final_loss": float,
                         "loss_curve": [[step, loss], ...], "chi_k_curve": [[step, chi], ...],
                         "mean_chi_k": float, "wall_time_s": float, "eval_accuracy": float (with an eval set), ...}},
     "world_size": int, "max_steps": int, "alignment_steps": int, "num_train": int, "hessian_num_samples": int, ...}

The curves include the shared prefix (steps < ``switch_step``), which is the same for every branch.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from . import distributed
from ._branches import (
    BRANCHES,
    DEFAULT_MODES,
    FIGURE_NAME,
    PREFIX_DIR,
    SUMMARY_NAME,
    BranchSpec,
    CompactProgress,
    StopAtStep,
    TrajectoryRecorder,
    branch_curves,
    clean_outputs,
    default_alignment_steps,
    format_results_table,
    parse_modes,
    value_at,
)
from ._params import select_parameters
from ._tensor_data import TensorDataset, to_tensor_dataset
from .trainer import SubspaceTrainer, hessian_subset_indices
from .training_args import SubspaceTrainingArguments

__all__ = [
    "BRANCHES",
    "DEFAULT_MODES",
    "PREFIXES",
    "BranchSpec",
    "ExperimentError",
    "ExperimentResult",
    "TensorDataset",
    "check_output_dir",
    "format_results_table",
    "hessian_subset",
    "parse_modes",
    "parse_prefix",
    "run_experiment",
    "to_tensor_dataset",
    "validate_experiment",
]

logger = logging.getLogger(__name__)

ModelSource = PreTrainedModel | Callable[[], PreTrainedModel]
CallbackFactory = Callable[[str], Iterable[TrainerCallback]]

PREFIXES: dict[str, str] = {
    "sgd": "minibatch SGD (the optimizer on minibatches of per_device_train_batch_size)",
    "gd": "full-batch GD (the optimizer on the gradient of the whole training set)",
}
"""The optimizers of the shared prefix (``run_experiment(prefix=...)``, ``--prefix``)."""


class ExperimentError(ValueError):
    """Invalid experiment settings, detected before anything is trained or written."""


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


def check_output_dir(output_dir: str | Path, overwrite_output_dir: bool) -> None:
    """Refuse an existing, non-empty ``output_dir`` unless ``overwrite_output_dir``; never touches anything.

    Raises:
        ExperimentError: naming ``--overwrite_output_dir``.
    """
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise ExperimentError(f"output_dir {str(path)!r} exists and is not a folder; choose another --output_dir.")
    if path.is_dir() and any(path.iterdir()) and not overwrite_output_dir:
        raise ExperimentError(
            f"output_dir {str(path)!r} already exists and is not empty; pass --overwrite_output_dir to replace the "
            "results of an earlier experiment there, or choose another --output_dir."
        )


def parse_prefix(prefix: str) -> str:
    """Normalise ``prefix`` (``"sgd"`` or ``"gd"``, any case).

    Raises:
        ExperimentError: for any other value, naming ``--prefix`` and the valid values.
    """
    name = str(prefix).strip().lower()
    if name not in PREFIXES:
        raise ExperimentError(
            f"--prefix={prefix!r} is not a prefix optimizer; choose from {', '.join(PREFIXES)} (sgd: minibatch SGD, "
            "gd: full-batch GD up to --switch_step)."
        )
    return name


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


def _make_model(model: ModelSource) -> PreTrainedModel:
    return model() if not isinstance(model, torch.nn.Module) and callable(model) else copy.deepcopy(model)


def validate_experiment(
    model: ModelSource,
    args: SubspaceTrainingArguments,
    train_dataset: Any,
    *,
    switch_step: int,
    modes: str | Iterable[str] = DEFAULT_MODES,
    overwrite_output_dir: bool = False,
    hessian_dataset: Any = None,
    prefix: str = "sgd",
) -> list[str]:
    """Check every setting of :func:`run_experiment` before anything is trained or written.

    Returns:
        The parsed mode names.

    Raises:
        ExperimentError: with a message naming the offending option.
    """
    if not isinstance(args, SubspaceTrainingArguments):
        raise ExperimentError(f"args must be SubspaceTrainingArguments, got {type(args).__name__}.")
    try:
        names = parse_modes(modes)
    except ValueError as err:
        raise ExperimentError(str(err)) from None
    parse_prefix(prefix)
    if args.max_steps is None or args.max_steps <= 0:
        raise ExperimentError("the experiment needs --max_steps > 0 (the total number of steps of every branch).")
    if not 1 <= switch_step < args.max_steps:
        raise ExperimentError(
            f"--switch_step={switch_step} must be at least 1 and below --max_steps={args.max_steps} (the branches "
            "start at the switch step)."
        )
    if args.subspace_auto_start:
        raise ExperimentError(
            "--subspace_auto_start is not used by the experiment: the branches leave the shared prefix at the fixed "
            "--switch_step. Remove --subspace_auto_start."
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
    if train_dataset is None or len(train_dataset) == 0:
        raise ExperimentError("the training dataset is empty.")
    if hessian_dataset is not None and len(hessian_dataset) == 0:
        raise ExperimentError("the Hessian dataset is empty.")
    probe = model if isinstance(model, torch.nn.Module) else _make_model(model)
    dim = sum(p.numel() for _, p in select_parameters(probe, args.subspace_parameter_filter))
    num = args.subspace_k + args.subspace_extra_eigenvalues
    if num >= dim:
        raise ExperimentError(
            f"--subspace_k={args.subspace_k} (+ --subspace_extra_eigenvalues={args.subspace_extra_eigenvalues}) must "
            f"be smaller than the number of parameters the subspace covers ({dim}); lower --subspace_k."
        )
    check_output_dir(args.output_dir, overwrite_output_dir)
    return names


# ----------------------------------------------------------------------------------------------- running


def _branch_args(args: SubspaceTrainingArguments, output_dir: Path, **changes: Any) -> SubspaceTrainingArguments:
    return dataclasses.replace(args, output_dir=str(output_dir), **changes)


def _barrier() -> None:
    if distributed.is_distributed():
        torch.distributed.barrier()


def _make_trainer(
    model: ModelSource,
    args: SubspaceTrainingArguments,
    name: str,
    common: Mapping[str, Any],
    callbacks: list[TrainerCallback],
) -> SubspaceTrainer:
    trainer = SubspaceTrainer(model=_make_model(model), args=args, callbacks=callbacks, **common)
    # The Trainer's progress callbacks print every (long) log dictionary; a compact bar replaces them.
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(CompactProgress(name, enabled=not args.disable_tqdm))
    return trainer


def _accuracy_metrics() -> Callable[[Any], dict[str, float]]:
    """``compute_metrics`` through ``evaluate`` (the Hub's accuracy, or the shipped script offline)."""
    from .evaluation import compute_accuracy, load_accuracy_metric

    try:
        metric = load_accuracy_metric()
    except Exception as err:  # evaluate unusable: plain numpy accuracy, same numbers
        logger.warning("could not load the evaluate accuracy metric (%s); computing accuracy directly", err)
        return compute_accuracy

    def compute(eval_pred: Any) -> dict[str, float]:
        predictions, labels = eval_pred.predictions, eval_pred.label_ids
        logits = predictions[0] if isinstance(predictions, tuple) else predictions
        pred = np.asarray(logits).argmax(axis=-1) if np.ndim(logits) > 1 else np.asarray(logits)
        true = np.asarray(labels)
        true = true.argmax(axis=-1) if true.ndim > 1 else true
        return metric.compute(predictions=pred.reshape(-1), references=true.reshape(-1))

    return compute


def run_experiment(
    model: ModelSource,
    args: SubspaceTrainingArguments,
    train_dataset: Any,
    *,
    switch_step: int,
    modes: str | Iterable[str] = DEFAULT_MODES,
    prefix: str = "sgd",
    recipe: str = "custom",
    eval_dataset: Any = None,
    hessian_dataset: Any = None,
    data_collator: Any = None,
    processing_class: Any = None,
    compute_metrics: Callable[[Any], dict[str, float]] | None = None,
    compute_loss_func: Callable[..., torch.Tensor] | None = None,
    callbacks: CallbackFactory | None = None,
    overwrite_output_dir: bool = False,
    record_trajectory: bool = False,
    dataset_name: str | None = None,
    extras: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    plot: bool = True,
) -> ExperimentResult:
    """Run the shared prefix and every branch, then write ``summary.json`` and the figure (rank 0).

    Args:
        model: the model to train, or a function returning a fresh one; each run trains its own copy (the branches'
            weights come from the prefix checkpoint).
        args: the training settings of every run. ``max_steps`` is the last step of every branch; ``output_dir`` is
            the experiment folder. Left unset (``None``), ``subspace_alignment_steps`` becomes about ``max_steps/40``
            (dividing ``switch_step`` when possible). ``subspace_mode`` must stay ``"none"`` (``modes`` decides).
        train_dataset: the training set. A ``datasets.Dataset`` of numeric columns is converted to an in-memory
            :class:`TensorDataset` (same items, much faster batching).
        switch_step: the step at which the branches leave the shared prefix (``1 <= switch_step < max_steps``).
        modes: branch names (``"sgd,dominant,bulk"``; see :data:`BRANCHES`: also ``gd``, ``dominant-gd``,
            ``bulk-gd``).
        prefix: the optimizer of the shared prefix: ``"sgd"`` (minibatches of ``per_device_train_batch_size``) or
            ``"gd"`` (full batch: ``per_device_train_batch_size = ceil(len(train_dataset) / world_size)``, no
            gradient accumulation); recorded as ``summary["prefix_optimizer"]``. Minibatch branches resume a GD
            prefix at the same global step; the Trainer then skips ``switch_step mod (batches per epoch)`` batches
            of their first epoch, so their data order differs from that of an uninterrupted SGD run.
        recipe: name recorded in the summary, the figure title and the model cards.
        eval_dataset: optional validation set: every branch reports ``eval_accuracy`` (through ``evaluate``) and
            ``eval_loss`` at the end.
        hessian_dataset: dataset of the Hessian, full-batch gradient and logged loss, shared by every run (default:
            :func:`hessian_subset`: the whole ``train_dataset`` if ``args.hessian_num_samples`` covers it, else the
            trainer's seeded subset of that many examples; ``hessian_num_samples`` is ignored when this is given).
        data_collator: as for ``Trainer``.
        processing_class: as for ``Trainer`` (a tokenizer is saved with every branch model).
        compute_metrics: evaluation metrics (default: accuracy via ``evaluate`` when ``eval_dataset`` is given).
        compute_loss_func: as for ``Trainer`` (e.g. an MSE loss for a Hub model); the Hessian uses it too.
        callbacks: ``f(run_name) -> callbacks`` for each run (``"prefix"`` and every mode).
        overwrite_output_dir: replace the results of an earlier experiment in ``output_dir``; without it an
            existing, non-empty ``output_dir`` is an error and nothing is touched.
        record_trajectory: record the parameters at every step (models with at most 16 parameters) and return them
            in :attr:`ExperimentResult.trajectories`.
        dataset_name: dataset name for the model cards.
        extras: additional top-level entries of ``summary.json``.
        metadata: written as ``hf_subspace_experiment.json`` in every branch folder (e.g. the recipe arguments, so
            ``hf-subspace spectrum`` can rebuild the dataset).
        plot: write the figure.

    Returns:
        An :class:`ExperimentResult` (the same summary on every rank).

    Raises:
        ExperimentError: for invalid settings, before anything is trained or written.
    """
    _ = args.device  # sets up the process group under torchrun / accelerate before anything else
    names = validate_experiment(
        model,
        args,
        train_dataset,
        switch_step=switch_step,
        modes=modes,
        overwrite_output_dir=overwrite_output_dir,
        hessian_dataset=hessian_dataset,
        prefix=prefix,
    )
    prefix = parse_prefix(prefix)
    _barrier()  # every rank has validated before rank 0 creates anything
    out = Path(args.output_dir)
    if distributed.is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        if overwrite_output_dir:
            clean_outputs(out)
    _barrier()

    train_dataset = to_tensor_dataset(train_dataset)
    # One Hessian set for the prefix and every branch (the trainer's own default subset, chosen once here).
    hessian_dataset = (
        hessian_subset(train_dataset, args) if hessian_dataset is None else to_tensor_dataset(hessian_dataset)
    )
    if eval_dataset is not None:
        eval_dataset = to_tensor_dataset(eval_dataset) if len(eval_dataset) else None
    if compute_metrics is None and eval_dataset is not None:
        with args.main_process_first(desc="loading the accuracy metric"):
            compute_metrics = _accuracy_metrics()
    align = args.subspace_alignment_steps
    if align is None:
        align = default_alignment_steps(args.max_steps, switch_step)
    common: dict[str, Any] = {
        "train_dataset": train_dataset,
        "eval_dataset": eval_dataset,
        "hessian_dataset": hessian_dataset,
        "data_collator": data_collator,
        "processing_class": processing_class,
        "compute_metrics": compute_metrics,
        "compute_loss_func": compute_loss_func,
    }
    base = {"subspace_alignment_steps": align, "subspace_auto_start": False}

    def run_callbacks(name: str) -> list[TrainerCallback]:
        return list(callbacks(name)) if callbacks is not None else []

    # 1. the shared prefix
    logger.info(
        "hf-subspace %s: prefix (unprojected, %s) to step %d of %d",
        recipe,
        PREFIXES[prefix],
        switch_step,
        args.max_steps,
    )
    prefix_changes = _full_batch(len(train_dataset), args) if prefix == "gd" else {}
    prefix_args = _branch_args(
        args,
        out / PREFIX_DIR,
        subspace_mode="none",
        subspace_start_step=0,
        save_only_model=False,
        **prefix_changes,
        **base,
    )
    recorder = TrajectoryRecorder() if record_trajectory else None
    prefix_cbs = [StopAtStep(switch_step), *([recorder] if recorder else []), *run_callbacks(PREFIX_DIR)]
    start = time.perf_counter()
    prefix_trainer = _make_trainer(model, prefix_args, PREFIX_DIR, common, prefix_cbs)
    prefix_trainer.train()
    prefix_history = list(prefix_trainer.state.log_history)
    prefix_seconds = time.perf_counter() - start
    checkpoint = out / PREFIX_DIR / f"checkpoint-{switch_step}"
    prefix_traj = [[s, *p] for s, p in zip(recorder.steps, recorder.points)] if recorder else []
    del prefix_trainer
    _barrier()  # the checkpoint is complete before any rank resumes from it
    if not checkpoint.is_dir():
        raise RuntimeError(f"the prefix did not save its checkpoint {checkpoint}; was training stopped early?")

    # 2. the branches
    runs: dict[str, dict[str, Any]] = {}
    branch_dirs: dict[str, Path] = {}
    trajectories: dict[str, list[list[float]]] = {PREFIX_DIR: prefix_traj} if record_trajectory else {}
    for name in names:
        spec = BRANCHES[name]
        logger.info("hf-subspace %s: branch %s (%s) from step %d", recipe, name, spec.description, switch_step)
        changes: dict[str, Any] = {"subspace_mode": spec.subspace_mode, "subspace_start_step": switch_step, **base}
        if spec.full_batch:
            changes.update(_full_batch(len(train_dataset), args))
        branch_args = _branch_args(args, out / name, **changes)
        recorder = TrajectoryRecorder() if record_trajectory else None
        start = time.perf_counter()
        trainer = _make_trainer(
            model, branch_args, name, common, [*([recorder] if recorder else []), *run_callbacks(name)]
        )
        trainer.train(resume_from_checkpoint=str(checkpoint))
        seconds = time.perf_counter() - start
        run = _run_record(prefix_history, trainer.state.log_history, switch_step, spec, seconds)
        if eval_dataset is not None:
            metrics = trainer.evaluate()
            run.update({k: float(v) for k, v in metrics.items() if k in ("eval_accuracy", "eval_loss")})
        trainer.save_model()
        if trainer.is_world_process_zero():
            trainer.create_model_card(
                model_name=f"{recipe}-{name}",
                dataset=dataset_name,
                tags=[recipe, f"subspace-{name}"],
            )
            if metadata is not None:
                info = {"recipe": recipe, "mode": name, "switch_step": switch_step, **dict(metadata)}
                (out / name / "hf_subspace_experiment.json").write_text(json.dumps(info, indent=2, default=str))
        runs[name] = run
        branch_dirs[name] = out / name
        if recorder is not None:
            trajectories[name] = [[s, *p] for s, p in zip(recorder.steps, recorder.points) if s >= switch_step]
        del trainer
        _barrier()

    # 3. the summary and the figure
    summary: dict[str, Any] = {
        "recipe": recipe,
        "k": args.subspace_k,
        "switch_step": switch_step,
        "prefix_optimizer": prefix,
        "runs": runs,
        "dataset": dataset_name,
        "max_steps": args.max_steps,
        "modes": names,
        "world_size": args.world_size,
        "alignment_steps": align,
        "refresh_steps": args.subspace_refresh_steps,
        "learning_rate": args.learning_rate,
        "optimizer": str(getattr(args.optim, "value", args.optim)),
        "optim_args": args.optim_args,
        "sam_rho": args.sam_rho,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "prefix_per_device_train_batch_size": prefix_args.per_device_train_batch_size,
        "num_train": len(train_dataset),
        "hessian_num_samples": len(hessian_dataset),
        "prefix_wall_time_s": prefix_seconds,
        **dict(extras or {}),
    }
    summary_path = figure_path = None
    if distributed.is_main_process():
        summary_path = out / SUMMARY_NAME
        summary_path.write_text(json.dumps(summary, indent=2))
        if plot:
            from .plotting import plot_summary

            figure_path = plot_summary(summary, out / FIGURE_NAME)
        logger.info("hf-subspace %s: wrote %s", recipe, summary_path)
    _barrier()
    return ExperimentResult(out, summary, summary_path, figure_path, branch_dirs, checkpoint, trajectories)


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
    }
