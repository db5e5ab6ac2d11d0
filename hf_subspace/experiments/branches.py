"""Helpers of :mod:`hf_subspace.experiments.experiment`: callbacks of the runs, curves and the results table."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .. import distributed
from ..metrics import METRIC_PREFIX
from ..trainer import SubspaceTrainer
from ..training_args import SubspaceTrainingArguments
from .arguments import ExperimentPlan, PreparedRecipe
from .settings import BRANCHES, OUTPUT_NAMES, PREFIX_DIR, ExperimentError

__all__ = [
    "BasisAudit",
    "BranchProgress",
    "CompactProgress",
    "StopAtStep",
    "StopWhenAligned",
    "TrajectoryRecorder",
    "audit_summary",
    "branch_curves",
    "branch_name",
    "card_description",
    "clean_outputs",
    "default_alignment_steps",
    "first_trainer",
    "format_results_table",
    "make_trainer",
    "optimizer_label",
    "quiet_runs",
    "recorded_arguments",
    "value_at",
]

logger = logging.getLogger(__name__)

LOSS_KEY = METRIC_PREFIX + "full_train_loss"
CHI_KEY = METRIC_PREFIX + "chi_k_full_grad"


def default_alignment_steps(max_steps: int, switch_step: int, points: int = 40) -> int:
    """An alignment interval giving about ``points`` measurements over the run, dividing ``switch_step`` if possible."""
    target = max(1, max_steps // points)
    for every in range(target, 0, -1):
        if switch_step % every == 0 and every * 2 > target:
            return every
    return target


def optimizer_label(optim: Any, optim_args: str | None = None, sam_rho: float = 0.0, sam_adaptive: bool = False) -> str:
    """A short name of what an optimizer setting runs: ``sgd``, ``momentum`` / ``nesterov`` (SGD with
    ``--optim_args momentum=...``), ``adamw`` (every ``adamw_*``), ``adam``, ``adafactor``, ...; with SAM
    (``sam_rho > 0``) prefixed ``sam-`` (``asam-`` when adaptive).

    Args:
        optim: ``TrainingArguments.optim`` (an ``OptimizerNames`` member or its string).
        optim_args: ``TrainingArguments.optim_args`` (``"momentum=0.9,nesterov=True"``).
        sam_rho: the SAM radius (0: no SAM).
        sam_adaptive: adaptive SAM.
    """
    name = str(getattr(optim, "value", optim)).strip().lower()
    options = dict(item.split("=", 1) for item in (optim_args or "").replace(" ", "").split(",") if "=" in item)
    if name == "sgd":
        momentum = float(options.get("momentum", 0) or 0)
        nesterov = str(options.get("nesterov", "false")).lower() in ("1", "true", "yes")
        label = ("nesterov" if nesterov else "momentum") if momentum > 0 else "sgd"
    elif name.startswith("adamw"):
        label = "adamw"
    else:
        label = name.split("_")[0] or name
    if sam_rho and sam_rho > 0:
        label = ("asam-" if sam_adaptive else "sam-") + label
    return label


def branch_name(mode: str, optimizer: str) -> str:
    """The folder and ``summary.json`` name of a branch: named by what it ran.

    The unprojected minibatch branch (mode ``sgd``) takes the optimizer's name (:func:`optimizer_label`: ``sgd``,
    ``momentum``, ``adamw``, ``sam-sgd``, ...), the unprojected full-batch branch (mode ``gd``) is ``gd`` for plain SGD
    and ``<optimizer>-gd`` otherwise (``adamw-gd``: full-batch AdamW); the projected branches keep their mode names
    (``dominant``, ``bulk``, ``dominant-gd``, ``bulk-gd``: the projection of that optimizer's updates).
    """
    if mode == "sgd":
        return optimizer
    if mode == "gd" and optimizer != "sgd":
        return f"{optimizer}-gd"
    return mode


def clean_outputs(output_dir: Path, branches: Sequence[str]) -> list[str]:
    """Make room in ``output_dir`` for a new experiment with the given branch folders, and say what goes.

    Removed: what the new experiment writes (the names in :data:`OUTPUT_NAMES` that are not branch folders, and the
    folders of ``branches``, with anything else in them, such as the ``spectrum.*`` of ``hf-subspace spectrum``).
    Kept: branch folders of the earlier experiment (known branch names, or those its ``summary.json`` lists) that
    the new one does not run, and everything else. A warning names the ``spectrum.*`` files removed and the branch
    folders kept.

    Returns:
        The names removed.
    """
    earlier = set(BRANCHES)
    try:
        runs = json.loads((output_dir / "summary.json").read_text()).get("runs", {})
        earlier |= {str(n) for n in runs if str(n) and "/" not in str(n) and not str(n).startswith(".")}
    except (OSError, ValueError, AttributeError):
        pass
    names = [n for n in OUTPUT_NAMES if n not in BRANCHES] + list(branches)
    removed, extra = [], []
    for name in dict.fromkeys(names):
        path = output_dir / name
        if path.is_dir() and not path.is_symlink():
            extra += [f"{name}/{p.name}" for p in sorted(path.iterdir()) if p.name.startswith("spectrum.")]
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    kept = sorted(n for n in earlier - set(branches) if (output_dir / n).is_dir())
    logger.info("--overwrite_output_dir: removed %s from %s", ", ".join(removed) or "nothing", output_dir)
    if extra:
        logger.warning(
            "--overwrite_output_dir: removed %s from %s: files of `hf-subspace spectrum` on the earlier branch models",
            ", ".join(extra), output_dir,
        )  # fmt: skip
    if kept:
        logger.warning(
            "--overwrite_output_dir: kept the earlier experiment's branch folder(s) %s in %s (not among this run's "
            "branches); the new summary.json does not list them",
            ", ".join(kept), output_dir,
        )  # fmt: skip
    return removed


_PATH_OPTIONS = ("train_file", "validation_file", "dataset_name", "tokenizer_name", "model_name_or_path")


def recorded_arguments(plan: ExperimentPlan, loss_type: str | None) -> dict[str, Any]:
    """The plan (a recipe's arguments) as saved in ``hf_subspace_experiment.json``: local paths made absolute (so
    ``hf-subspace spectrum`` finds the data from any folder) and the loss actually trained."""
    record = dataclasses.asdict(plan)
    record.pop("recipe", None)  # recorded beside it
    for key in _PATH_OPTIONS:
        value = record.get(key)
        if isinstance(value, str) and value and Path(value).expanduser().exists():
            record[key] = str(Path(value).expanduser().resolve())
    record["loss_type"] = loss_type
    return record


def card_description(plan: ExperimentPlan, prepared: PreparedRecipe) -> str:
    """The paragraph at the top of every branch card: the experiment, its data and its loss."""
    lines = [f"Experiment `{plan.title}` (recipe `{plan.recipe}` of hf-subspace)."]
    if prepared.dataset_description:
        lines.append(f"Training data: {prepared.dataset_description}.")
    if prepared.loss:
        lines.append(f"Loss: {prepared.loss}.")
    return " ".join(lines)


_EXPECTED_MESSAGES: dict[str, tuple[str, ...]] = {
    # A branch resumes the prefix checkpoint with its own batch size (GD) and subspace mode, on purpose.
    "transformers.trainer_utils": ("do not match the ones in the `trainer_state.json`",),
    "hf_subspace.callback": ("they apply from the resumed step",),
}


class _DropExpected(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


@contextlib.contextmanager
def quiet_runs() -> Iterator[None]:
    """Silence what the runner's own choices make the libraries print, for the duration of an experiment.

    Drops the Trainer's warning that a resumed branch's batch size differs from the prefix checkpoint's and the
    notice that the subspace mode changed on resume (both deliberate), the ``transformers`` progress bars of model
    saving ("Writing model shards", one per branch), and PyTorch's ``pin_memory`` warning on machines without an
    accelerator. Restores everything afterwards.
    """
    from transformers.utils import logging as hf_logging

    filters = [(logging.getLogger(name), _DropExpected(fragments)) for name, fragments in _EXPECTED_MESSAGES.items()]
    for log, flt in filters:
        log.addFilter(flt)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pin_memory.*")
            yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()
        for log, flt in filters:
            log.removeFilter(flt)


# ----------------------------------------------------------------------------------------------- callbacks


class StopAtStep(TrainerCallback):
    """Stop training after global step ``step`` and save a checkpoint there (the shared prefix of the branches)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if state.global_step >= self.step:
            control.should_save = True
            control.should_training_stop = True


class StopWhenAligned(TrainerCallback):
    """The paper's switch: stop the prefix once the χ_k EMA of the full-batch gradient reaches ``threshold``, or at
    step ``cap`` at the latest, and save a checkpoint there.

    The EMA takes its first measurement as is, so one high value at step 0 would trigger it: the rule only applies
    once the EMA has averaged ``min_measurements`` values (default ``ceil(1 / (1 − decay))``, its time constant; 10
    for the paper's 0.9), i.e. once χ_k has stayed high. The measurement logged at step t is of θ_t, taken before
    the update of step t; the prefix stops at the end of that step, so the branches start from θ_{t+1}.
    :attr:`crossed_at` is t (``None`` when the cap was reached first).
    """

    def __init__(
        self, threshold: float, cap: int, decay: float = 0.9, tag: str = "subspace/chi_k_full_grad_ema"
    ) -> None:
        self.threshold, self.cap, self.tag = threshold, cap, tag
        self.min_measurements = math.ceil(1.0 / (1.0 - decay) - 1e-9)
        self.seen = 0
        self.crossed_at: int | None = None

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        value = (kw.get("logs") or {}).get(self.tag)
        if value is None:
            return
        self.seen += 1
        if self.crossed_at is None and self.seen >= self.min_measurements and value >= self.threshold:
            self.crossed_at = state.global_step

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if self.crossed_at is not None or state.global_step >= self.cap:
            control.should_save = True
            control.should_training_stop = True


class BasisAudit(TrainerCallback):
    """Exact checks of the basis a projected run uses: every ``every`` projected steps, the distance
    ‖P_used − P_exact‖₂ between the basis the step projects onto and the top-k eigenspace at θ_t, solved from scratch
    with ARPACK (``eigsh``, relative residual 1e-6) on the trainer's own Hessian operator.

    Add it with ``trainer.add_callback`` after the trainer is built, so it runs after the subspace callback has
    refreshed (or kept) the basis for the step. Its products are not counted in ``subspace/hvps_total``.
    :attr:`records` holds ``[step, distance]`` pairs; :func:`audit_summary` gives median / p95 / max.
    """

    def __init__(self, trainer: Any, every: int) -> None:
        self.trainer, self.every = trainer, every
        self.records: list[list[float]] = []

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        from ..eigensolvers import top_eigenpairs
        from ..subspace import projector_distance

        sub = self.trainer.subspace_state
        step = state.global_step
        if self.every <= 0 or not sub.projecting or sub.basis is None or step % self.every:
            return
        result = top_eigenpairs(self.trainer.hessian_operator, sub.basis.k, method="eigsh", tol=1e-6, seed=step)
        self.records.append([step, projector_distance(sub.basis.vectors, result.eigenvectors)])


class BranchProgress(TrainerCallback):
    """What a branch's record needs and the trainer's checkpoint does not hold: the :class:`BasisAudit` records and the
    seconds the branch has trained. Rank 0 writes them as ``branch_progress.json`` into every checkpoint the branch
    saves; a branch resumed from such a checkpoint starts from them, so its record covers the whole branch (the steps
    after the checkpoint are trained, and audited, again).

    Args:
        audit: the branch's audit, whose :attr:`~BasisAudit.records` are restored and saved.
        checkpoint: the branch checkpoint the branch resumes from (``None``: it starts at the switch).
        started: ``time.perf_counter()`` when this session of the branch started.
    """

    FILE = "branch_progress.json"

    def __init__(self, audit: BasisAudit, checkpoint: str | None, started: float) -> None:
        self.audit, self.started, self.seconds_before = audit, started, 0.0
        saved = Path(checkpoint) / self.FILE if checkpoint else None
        if saved is not None and saved.is_file():
            progress = json.loads(saved.read_text())
            self.seconds_before = float(progress["seconds"])
            audit.records[:0] = progress["audit"]

    @property
    def seconds(self) -> float:
        """Seconds of training of the whole branch: those before the resumed checkpoint and this session's."""
        return self.seconds_before + time.perf_counter() - self.started

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            progress = {"seconds": self.seconds, "audit": self.audit.records}
            (folder / self.FILE).write_text(json.dumps(progress, default=float))


def audit_summary(records: Sequence[Sequence[float]]) -> dict[str, Any] | None:
    """``{"n", "median", "p95", "max", "points"}`` of :class:`BasisAudit` records (``None`` without any)."""
    if not records:
        return None
    values = np.asarray([r[1] for r in records], dtype=float)
    return {
        "n": len(values),
        "median": float(np.median(values)),
        "p95": float(np.percentile(values, 95)),
        "max": float(values.max()),
        "points": [list(r) for r in records],
    }


class CompactProgress(TrainerCallback):
    """A one-line tqdm bar per run (rank 0) showing the latest full training loss and χ_k.

    Replaces the Trainer's own progress callback, which prints every (long) subspace log dictionary.
    """

    def __init__(self, name: str, enabled: bool = True) -> None:
        self.name, self.enabled, self.bar = name, enabled, None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if self.enabled and state.is_world_process_zero:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=f"{self.name:>11}", leave=True)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        logs = kw.get("logs") or {}
        if self.bar is not None and LOSS_KEY in logs:
            post = {"loss": f"{logs[LOSS_KEY]:.4g}"}
            if CHI_KEY in logs:
                post["chi_k"] = f"{logs[CHI_KEY]:.3f}"
            self.bar.set_postfix(post, refresh=False)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class TrajectoryRecorder(TrainerCallback):
    """Records the flattened trainable parameters at every step (for 2-D toy problems)."""

    def __init__(self, max_dim: int = 16) -> None:
        self.max_dim = max_dim
        self.points: list[list[float]] = []
        self.steps: list[int] = []

    def _record(self, state: TrainerState, model: torch.nn.Module | None) -> None:
        if model is None or (self.steps and self.steps[-1] == state.global_step):
            return
        flat = torch.cat([p.detach().reshape(-1).float().cpu() for p in model.parameters() if p.requires_grad])
        if flat.numel() <= self.max_dim:
            self.steps.append(int(state.global_step))
            self.points.append(flat.tolist())

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        self._record(state, kw.get("model"))

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        self._record(state, kw.get("model"))


# ----------------------------------------------------------------------------------------------- trainers


def make_trainer(
    model: Any,
    args: SubspaceTrainingArguments,
    name: str,
    common: Mapping[str, Any],
    callbacks: list[TrainerCallback],
) -> SubspaceTrainer:
    """A branch's (or the prefix's) trainer: a fresh copy of ``model`` (or a new one from a factory), a compact progress
    bar instead of the Trainer's printing ones, and its TensorBoard run named by the branch."""
    fresh = model() if not isinstance(model, torch.nn.Module) and callable(model) else copy.deepcopy(model)
    trainer = SubspaceTrainer(model=fresh, args=args, callbacks=callbacks, **common)
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


def first_trainer(
    model: Any, args: SubspaceTrainingArguments, common: Mapping[str, Any], callbacks: list[TrainerCallback]
) -> SubspaceTrainer:
    """The prefix's trainer, built before anything is written: its refusal (e.g. ``subspace_k`` too large for the
    model; the rule lives in :class:`~hf_subspace.SubspaceTrainer`) becomes an :class:`ExperimentError`, and the
    folders its construction created are removed again, so a refused experiment leaves no trace."""
    created = [p for p in (Path(args.output_dir).parent, Path(args.output_dir)) if not p.exists()]
    try:
        return make_trainer(model, args, PREFIX_DIR, common, callbacks)
    except ValueError as err:
        if distributed.is_main_process():
            for path in reversed(created):
                if path.is_dir() and not any(path.iterdir()):
                    path.rmdir()
        raise ExperimentError(str(err)) from None


# ----------------------------------------------------------------------------------------------- curves


def _measurements(log_history: Sequence[Mapping[str, Any]]) -> dict[int, dict[str, float]]:
    """``{step: {"loss": ..., "chi": ...}}`` of the alignment measurements in a log history (later entries win)."""
    out: dict[int, dict[str, float]] = {}
    for entry in log_history:
        if LOSS_KEY not in entry or "step" not in entry:
            continue
        point = out.setdefault(int(entry["step"]), {})
        point["loss"] = float(entry[LOSS_KEY])
        if CHI_KEY in entry:
            point["chi"] = float(entry[CHI_KEY])
    return out


def branch_curves(
    prefix_history: Sequence[Mapping[str, Any]], branch_history: Sequence[Mapping[str, Any]], switch_step: int
) -> tuple[list[list[float]], list[list[float]]]:
    """Loss and χ_k curves of one branch: the shared prefix (steps < switch) followed by the branch's own points.

    At the switch step the branch's own measurement (taken with a freshly computed basis) wins over the prefix's.

    Returns:
        ``(loss_curve, chi_k_curve)`` as ``[[step, value], ...]`` sorted by step, finite values only.
    """
    merged = {s: p for s, p in _measurements(prefix_history).items() if s <= switch_step}
    merged.update({s: p for s, p in _measurements(branch_history).items() if s >= switch_step})
    loss, chi = [], []
    for step in sorted(merged):
        point = merged[step]
        if math.isfinite(point.get("loss", math.nan)):
            loss.append([step, point["loss"]])
        if math.isfinite(point.get("chi", math.nan)):
            chi.append([step, point["chi"]])
    return loss, chi


def value_at(curve: Sequence[Sequence[float]], step: int) -> float | None:
    """The value of ``[[step, value], ...]`` at ``step`` (``None`` if not measured there)."""
    return next((float(v) for s, v in curve if int(s) == step), None)


# ----------------------------------------------------------------------------------------------- table


def format_results_table(summary: Mapping[str, Any]) -> str:
    """A plain-text table: branch, loss at the switch, final loss, final/switch, mean χ_k after the switch,
    and the validation accuracy when measured."""
    runs: Mapping[str, Mapping[str, Any]] = summary.get("runs") or {}
    with_acc = any("eval_accuracy" in r for r in runs.values())
    header = ["branch", "loss at switch", "final loss", "final/switch", "mean chi_k"] + (
        ["val acc"] if with_acc else []
    )
    rows = [header]
    for mode, run in runs.items():
        at, final = run.get("loss_at_switch"), run.get("final_loss")
        ratio = final / at if isinstance(at, float) and isinstance(final, float) and at > 0 else None
        row = [mode, _fmt(at), _fmt(final), _fmt(ratio, ".3f"), _fmt(run.get("mean_chi_k"), ".3f")]
        if with_acc:
            row.append(_fmt(run.get("eval_accuracy"), ".3f"))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    name = str(summary.get("name") or summary.get("recipe", ""))
    if summary.get("dataset"):
        name += f" ({summary['dataset']})"
    title = f"{name}: k = {summary.get('k')}, switch at step {summary.get('switch_step')} of {summary.get('max_steps')}"
    batch, world = summary.get("global_train_batch_size"), summary.get("world_size")
    if batch:
        per = summary.get("per_device_train_batch_size")
        accumulation = summary.get("gradient_accumulation_steps") or 1
        title += f", global batch {batch}" + (
            f" ({world} processes × {per}" + (f" × {accumulation} accumulation steps" if accumulation > 1 else "") + ")"
            if (world or 1) > 1 or accumulation > 1
            else ""
        )
    return title + "\n" + "\n".join(lines)


def _fmt(value: Any, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)
