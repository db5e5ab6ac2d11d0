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
   TensorBoard run (event files directly in its folder, so the run is named by the branch), model and model card in
   ``output_dir/<branch>/``. A branch is named by what it ran (:func:`~.branches.branch_name`): the unprojected
   minibatch branch after its optimizer (``sgd``, ``momentum``, ``adamw``, ...), the others after their mode;
3. rank 0 writes ``output_dir/summary.json`` and ``output_dir/figure.png`` (:func:`hf_subspace.experiments.plotting.plot_summary`).

The Hessian dataset (on which the Hessian, the "full-batch" gradient of χ_k and the logged loss are computed) is
chosen once and shared by the prefix and every branch: the ``hessian_dataset`` given, else the training set when
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

import copy
import dataclasses
import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import get_last_checkpoint

from .. import distributed
from ..tensor_dataset import to_tensor_dataset
from ..trainer import SubspaceTrainer, hessian_subset_indices
from ..training_args import SubspaceTrainingArguments
from .branches import (
    BasisAudit,
    CompactProgress,
    StopAtStep,
    StopWhenAligned,
    TrajectoryRecorder,
    audit_summary,
    branch_name,
    branch_record,
    clean_outputs,
    default_alignment_steps,
    format_results_table,
    optimizer_label,
    quiet_runs,
    switch_record,
)
from .diagnostics import metric_curves
from .evaluation import accuracy_metrics
from .settings import (
    BRANCHES,
    DEFAULT_MODES,
    FIGURE_NAME,
    PREFIX_DIR,
    PREFIXES,
    SUMMARY_NAME,
    ExperimentError,
    check_output_dir,
    parse_modes,
    parse_prefix,
)

__all__ = [
    "ExperimentResult",
    "hessian_subset",
    "run_experiment",
    "validate_experiment",
]

logger = logging.getLogger(__name__)

ModelSource = PreTrainedModel | Callable[[], PreTrainedModel]
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
    output_dir_checked: bool = False,
) -> tuple[list[str], str]:
    """Check the settings of :func:`run_experiment` before anything is trained or written (its one gate).

    The rules on the model itself (``subspace_k`` + extra eigenvalues below the number of covered parameters, a
    Hessian dataset with labels, ...) are :class:`~hf_subspace.SubspaceTrainer`'s: :func:`run_experiment` builds the
    prefix's trainer before it writes anything and reports the trainer's refusal as an :class:`ExperimentError`.

    Returns:
        ``(mode names, prefix)``, both normalised.

    Raises:
        ExperimentError: with a message naming the offending option.
    """
    if not isinstance(args, SubspaceTrainingArguments):
        raise ExperimentError(f"args must be SubspaceTrainingArguments, got {type(args).__name__}.")
    names = parse_modes(modes)
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
    columns = getattr(train_dataset, "column_names", None)
    if isinstance(columns, list) and not {"labels", "label", "label_ids"} & set(columns):
        raise ExperimentError(
            f"the training dataset has no labels: no 'labels' or 'label' column among {columns}; the training loss "
            "(and so its Hessian) needs them. Add a label column (the recipes take --label_column for text data)."
        )
    if hessian_dataset is not None and len(hessian_dataset) == 0:
        raise ExperimentError("the Hessian dataset is empty.")
    if not output_dir_checked:
        check_output_dir(args.output_dir, overwrite_output_dir)
    return names, parse_prefix(prefix)


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
    # TensorBoard: one run per branch, named by it (the run's own folder, or $TENSORBOARD_LOGGING_DIR/<name>),
    # instead of the Trainer's output_dir/runs/<date>_<host>.
    from transformers.integrations import TensorBoardCallback

    root = os.environ.get("TENSORBOARD_LOGGING_DIR")
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.tb_writer is None:
            callback.logging_dir = str(Path(root).expanduser() / name) if root else str(args.output_dir)
    return trainer


def _first_trainer(
    model: ModelSource, args: SubspaceTrainingArguments, common: Mapping[str, Any], callbacks: list[TrainerCallback]
) -> SubspaceTrainer:
    """The prefix's trainer, built before anything is written: its refusal (e.g. ``subspace_k`` too large for the
    model; the rule lives in :class:`~hf_subspace.SubspaceTrainer`) becomes an :class:`ExperimentError`, and the
    folders its construction created are removed again, so a refused experiment leaves no trace."""
    created = [p for p in (Path(args.output_dir).parent, Path(args.output_dir)) if not p.exists()]
    try:
        return _make_trainer(model, args, PREFIX_DIR, common, callbacks)
    except ValueError as err:
        if distributed.is_main_process():
            for path in reversed(created):
                if path.is_dir() and not any(path.iterdir()):
                    path.rmdir()
        raise ExperimentError(str(err)) from None


def _quietly(function: Callable[..., ExperimentResult]) -> Callable[..., ExperimentResult]:
    """Run ``function`` inside :func:`~hf_subspace.experiments.branches.quiet_runs`."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> ExperimentResult:
        with quiet_runs():
            return function(*args, **kwargs)

    return wrapper


@_quietly
def run_experiment(
    model: ModelSource,
    args: SubspaceTrainingArguments,
    train_dataset: Any,
    *,
    switch_step: int,
    switch_rule: str = "fixed",
    basis_audit_steps: int = 0,
    switch_measure_steps: int = 1,
    resume: bool = False,
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
    output_dir_checked: bool = False,
    name: str | None = None,
    card_description: str = "",
    dataset_tags: Iterable[str] | None = None,
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
        switch_step: the step at which the branches leave the shared prefix (``1 <= switch_step < max_steps``);
            with ``switch_rule="ema"`` the latest such step (a cap).
        switch_rule: ``"fixed"`` (at ``switch_step``) or ``"ema"``, the paper's rule (:class:`~.branches.StopWhenAligned`:
            the prefix stops after the first step whose χ_k EMA reaches ``args.subspace_auto_start_threshold``);
            ``summary["switch_step"]`` is where the branches start, ``summary["switch_rule"]`` the rule and cap.
        switch_measure_steps: with ``switch_rule="ema"``, the prefix's measurement interval (the paper: 1).
        resume: continue an interrupted experiment in ``output_dir``: reuse a finished prefix and finished branches
            (their ``*_record.json``); resume others from their latest checkpoint (``save_strategy="steps"``).
        basis_audit_steps: every that many steps of a projected branch, the distance of the basis in use to the
            exact top-k eigenspace (:class:`~.branches.BasisAudit`), in each run's ``basis_error_audit``; 0: never.
        modes: branch kinds (``"sgd,dominant,bulk"``; see :data:`BRANCHES`: also ``gd``, ``dominant-gd``,
            ``bulk-gd``). Each branch is named by what it ran (:func:`~.branches.branch_name`): the unprojected
            minibatch branch takes the optimizer's name (``sgd``, ``momentum``, ``adamw``, ``sam-sgd``, ...).
        prefix: the optimizer of the shared prefix: ``"sgd"`` (minibatches of ``per_device_train_batch_size``) or
            ``"gd"`` (full batch: ``per_device_train_batch_size = ceil(len(train_dataset) / world_size)``, no
            gradient accumulation); recorded as ``summary["prefix_optimizer"]``. Minibatch branches resume a GD
            prefix at the same global step; the Trainer then skips ``switch_step mod (batches per epoch)`` batches
            of their first epoch, so their data order differs from that of an uninterrupted SGD run.
        recipe: name recorded in the summary, the figure title and the model cards.
        eval_dataset: optional validation set: every branch reports ``eval_accuracy`` and ``eval_loss`` at the end.
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
        output_dir_checked: the caller has already refused an occupied ``output_dir`` (``validate_recipe`` does,
            before loading data), so the check is not repeated.
        name: the experiment's title in the summary, the table, the figure and the model cards (``<name>-<branch>``);
            default ``recipe``.
        card_description: a paragraph at the top of every branch's model card (e.g. the data and the loss).
        dataset_tags: Hub dataset ids for the cards' metadata (only for data that came from the Hub).

    Returns:
        An :class:`ExperimentResult` (the same summary on every rank).

    Raises:
        ExperimentError: for invalid settings, before anything is trained or written.
    """
    _ = args.device  # sets up the process group under torchrun / accelerate before anything else
    if switch_rule not in ("fixed", "ema"):
        raise ExperimentError(f"switch_rule={switch_rule!r} must be 'fixed' or 'ema'.")
    names, prefix = validate_experiment(
        model,
        args,
        train_dataset,
        switch_step=switch_step,
        modes=modes,
        overwrite_output_dir=overwrite_output_dir,
        hessian_dataset=hessian_dataset,
        prefix=prefix,
        output_dir_checked=output_dir_checked or resume,
    )
    _barrier()  # every rank has validated before rank 0 creates anything
    out = Path(args.output_dir)

    train_dataset = to_tensor_dataset(train_dataset)
    # One Hessian set for the prefix and every branch (the trainer's own default subset, chosen once here).
    hessian_dataset = (
        hessian_subset(train_dataset, args) if hessian_dataset is None else to_tensor_dataset(hessian_dataset)
    )
    if eval_dataset is not None:
        eval_dataset = to_tensor_dataset(eval_dataset) if len(eval_dataset) else None
    if compute_metrics is None and eval_dataset is not None:
        with args.main_process_first(desc="loading the accuracy metric"):
            compute_metrics = accuracy_metrics()
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
    stopper: TrainerCallback = StopAtStep(switch_step)
    if switch_rule == "ema":
        # The paper's protocol: χ_k and its EMA at every prefix step (or every switch_measure_steps).
        prefix_args = dataclasses.replace(prefix_args, subspace_alignment_steps=switch_measure_steps)
        stopper = StopWhenAligned(args.subspace_auto_start_threshold, switch_step, args.subspace_ema_decay)
    cap = switch_step
    recorder = TrajectoryRecorder() if record_trajectory else None
    prefix_cbs = [stopper, *([recorder] if recorder else []), *run_callbacks(PREFIX_DIR)]
    record_path = out / PREFIX_DIR / "prefix_record.json"
    if resume and record_path.is_file():
        saved = json.loads(record_path.read_text())
        switch_step, prefix_history, prefix_seconds = saved["switch_step"], saved["history"], saved["seconds"]
        prefix_hvps, crossed_at, prefix_traj = saved["hvps"], saved["crossed_at"], saved["trajectory"]
        logger.info("hf-subspace %s: reusing the finished prefix (switch at step %d)", recipe, switch_step)
    else:
        start = time.perf_counter()
        prefix_trainer = _first_trainer(model, prefix_args, common, prefix_cbs)
        if distributed.is_main_process():
            out.mkdir(parents=True, exist_ok=True)
            if overwrite_output_dir and not resume:
                clean_outputs(out)
        _barrier()
        prefix_trainer.train()
        switch_step = prefix_trainer.state.global_step
        prefix_hvps = prefix_trainer.subspace_state.hvps_total
        prefix_history = list(prefix_trainer.state.log_history)
        prefix_seconds = time.perf_counter() - start
        crossed_at = getattr(stopper, "crossed_at", None)
        prefix_traj = [[s, *p] for s, p in zip(recorder.steps, recorder.points)] if recorder else []
        del prefix_trainer
        if distributed.is_main_process():
            saved = {"switch_step": switch_step, "history": prefix_history, "seconds": prefix_seconds,
                     "hvps": prefix_hvps, "crossed_at": crossed_at, "trajectory": prefix_traj}  # fmt: skip
            record_path.write_text(json.dumps(saved, default=float))
    checkpoint = out / PREFIX_DIR / f"checkpoint-{switch_step}"
    _barrier()  # the checkpoint is complete before any rank resumes from it
    if not checkpoint.is_dir():
        raise RuntimeError(f"the prefix did not save its checkpoint {checkpoint}; was training stopped early?")

    # 2. the branches, each named by what it ran (the unprojected one after its optimizer)
    title = name or recipe
    optimizer = optimizer_label(args.optim, args.optim_args, args.sam_rho, getattr(args, "sam_adaptive", False))
    runs: dict[str, dict[str, Any]] = {}
    branch_dirs: dict[str, Path] = {}
    trajectories: dict[str, list[list[float]]] = {PREFIX_DIR: prefix_traj} if record_trajectory else {}
    for mode in names:
        spec = BRANCHES[mode]
        label = branch_name(mode, optimizer)
        done = out / label / "branch_record.json"
        if resume and done.is_file():
            runs[label], branch_dirs[label] = json.loads(done.read_text()), out / label
            logger.info("hf-subspace %s: reusing the finished branch %s", title, label)
            continue
        logger.info("hf-subspace %s: branch %s (%s) from step %d", title, label, spec.description, switch_step)
        changes: dict[str, Any] = {"subspace_mode": spec.subspace_mode, "subspace_start_step": switch_step, **base}
        if spec.full_batch:
            changes.update(_full_batch(len(train_dataset), args))
        branch_args = _branch_args(args, out / label, **changes)
        recorder = TrajectoryRecorder() if record_trajectory else None
        start = time.perf_counter()
        trainer = _make_trainer(
            model, branch_args, label, common, [*([recorder] if recorder else []), *run_callbacks(label)]
        )
        audit = BasisAudit(trainer, basis_audit_steps)
        trainer.add_callback(audit)  # after the subspace callback: it sees the basis each step projects onto
        latest = get_last_checkpoint(str(out / label)) if resume and (out / label).is_dir() else None
        trainer.train(resume_from_checkpoint=latest or str(checkpoint))
        seconds = time.perf_counter() - start
        history = trainer.state.log_history
        run = branch_record(
            prefix_history, history, switch_step, spec, seconds, metric_curves(prefix_history, history, switch_step)
        )
        run["hvps_branch"] = trainer.subspace_state.hvps_total - prefix_hvps  # the prefix's are checkpointed too
        run["basis_error_audit"] = audit_summary(audit.records)
        run["mode"] = mode
        if eval_dataset is not None:
            metrics = trainer.evaluate()
            run.update({k: float(v) for k, v in metrics.items() if k in ("eval_accuracy", "eval_loss")})
        trainer.save_model()
        if trainer.is_world_process_zero():
            trainer.create_model_card(
                model_name=f"{title}-{label}",
                dataset_tags=list(dataset_tags or []) or None,
                tags=[recipe, f"subspace-{mode}"],
                description=card_description,
            )
            if metadata is not None:
                info = {"recipe": recipe, "name": title, "mode": mode, "branch": label, "switch_step": switch_step}
                info.update(dict(metadata))
                (out / label / "hf_subspace_experiment.json").write_text(json.dumps(info, indent=2, default=str))
            done.write_text(json.dumps(run, default=float))
        runs[label] = run
        branch_dirs[label] = out / label
        if recorder is not None:
            trajectories[label] = [[s, *p] for s, p in zip(recorder.steps, recorder.points) if s >= switch_step]
        del trainer
        _barrier()

    # 3. the summary and the figure
    summary: dict[str, Any] = {
        "recipe": recipe,
        "name": title,
        "k": args.subspace_k,
        "switch_step": switch_step,
        "seed": args.seed,
        "switch_rule": switch_record(stopper, switch_rule, cap, crossed_at),
        "prefix_optimizer": prefix,
        "runs": runs,
        "dataset": dataset_name,
        "max_steps": args.max_steps,
        "modes": names,
        "world_size": args.world_size,
        "alignment_steps": align,
        "refresh_steps": args.subspace_refresh_steps,
        "basis_tol": args.subspace_basis_tol,
        "learning_rate": args.learning_rate,
        "optimizer": str(getattr(args.optim, "value", args.optim)),
        "optim_args": args.optim_args,
        "sam_rho": args.sam_rho,
        "optimizer_label": optimizer,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "global_train_batch_size": args.per_device_train_batch_size
        * args.world_size
        * args.gradient_accumulation_steps,
        "prefix_per_device_train_batch_size": prefix_args.per_device_train_batch_size,
        "num_train": len(train_dataset),
        "hessian_num_samples": len(hessian_dataset),
        "prefix_wall_time_s": prefix_seconds,
        "prefix_hvps": prefix_hvps,
        **dict(extras or {}),
    }
    summary_path = figure_path = None
    if distributed.is_main_process():
        summary_path = out / SUMMARY_NAME
        summary_path.write_text(json.dumps(summary, indent=2))
        if plot:
            from .plotting import plot_summary

            figure_path = plot_summary(summary, out / FIGURE_NAME)
            from .diagnostics import extra_figures

            extra_figures(summary, out)  # sharpness.png (GD), spectrum.png (extra eigenvalues) when supported
        logger.info("hf-subspace %s: wrote %s", recipe, summary_path)
    _barrier()
    return ExperimentResult(out, summary, summary_path, figure_path, branch_dirs, checkpoint, trajectories)
