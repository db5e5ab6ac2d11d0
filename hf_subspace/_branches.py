"""Helpers of :mod:`hf_subspace.experiment`: branch specifications, callbacks, curves and the results table."""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from .metrics import METRIC_PREFIX

__all__ = [
    "BRANCHES",
    "DEFAULT_MODES",
    "OUTPUT_NAMES",
    "BranchSpec",
    "CompactProgress",
    "StopAtStep",
    "TrajectoryRecorder",
    "branch_curves",
    "clean_outputs",
    "default_alignment_steps",
    "format_results_table",
    "parse_modes",
]

LOSS_KEY = METRIC_PREFIX + "full_train_loss"
CHI_KEY = METRIC_PREFIX + "chi_k_full_grad"


@dataclass(frozen=True)
class BranchSpec:
    """One branch of the protocol.

    Attributes:
        name: the mode name used on the command line, in ``summary.json`` and as the branch folder.
        subspace_mode: ``SubspaceTrainingArguments.subspace_mode`` of the branch (``none``/``dominant``/``bulk``).
        full_batch: the branch steps on the full-batch gradient (GD) instead of minibatches.
        description: a human name (the paper's).
    """

    name: str
    subspace_mode: str
    full_batch: bool
    description: str


BRANCHES: dict[str, BranchSpec] = {
    spec.name: spec
    for spec in (
        BranchSpec("sgd", "none", False, "SGD (the optimizer, unprojected)"),
        BranchSpec("dominant", "dominant", False, "Dom-SGD (updates projected onto the top-k eigenspace)"),
        BranchSpec("bulk", "bulk", False, "Bulk-SGD (top-k eigenspace projected out)"),
        BranchSpec("gd", "none", True, "full-batch GD"),
        BranchSpec("dominant-gd", "dominant", True, "Dom-GD (full batch, projected onto the top-k eigenspace)"),
        BranchSpec("bulk-gd", "bulk", True, "Bulk-GD (full batch, top-k eigenspace projected out)"),
    )
}
_ALIASES = {"dom": "dominant", "dom-sgd": "dominant", "bulk-sgd": "bulk", "dom-gd": "dominant-gd", "none": "sgd"}
DEFAULT_MODES: tuple[str, ...] = ("sgd", "dominant", "bulk")
PREFIX_DIR = "prefix"
SUMMARY_NAME = "summary.json"
FIGURE_NAME = "figure.png"
OUTPUT_NAMES: tuple[str, ...] = (PREFIX_DIR, SUMMARY_NAME, FIGURE_NAME, "trajectory.png", *BRANCHES)
"""Everything the experiment writes directly under its ``output_dir`` (what ``overwrite_output_dir`` replaces)."""


def parse_modes(modes: str | Iterable[str]) -> list[str]:
    """Normalise ``"sgd,dominant,bulk"`` (or a list) to known branch names, in order, without duplicates.

    Raises:
        ValueError: for an empty list or an unknown mode, naming the valid ones.
    """
    items = modes.split(",") if isinstance(modes, str) else list(modes)
    names: list[str] = []
    for item in items:
        name = str(item).strip().lower().replace("_", "-")
        if not name:
            continue
        name = _ALIASES.get(name, name)
        if name not in BRANCHES:
            raise ValueError(f"unknown mode {str(item).strip()!r} in --modes; choose from {', '.join(BRANCHES)}")
        if name not in names:
            names.append(name)
    if not names:
        raise ValueError(f"--modes is empty; choose from {', '.join(BRANCHES)}")
    return names


def default_alignment_steps(max_steps: int, switch_step: int, points: int = 40) -> int:
    """An alignment interval giving about ``points`` measurements over the run, dividing ``switch_step`` if possible."""
    target = max(1, max_steps // points)
    for every in range(target, 0, -1):
        if switch_step % every == 0 and every * 2 > target:
            return every
    return target


def clean_outputs(output_dir: Path) -> None:
    """Remove what an earlier experiment wrote in ``output_dir`` (only the names in :data:`OUTPUT_NAMES`)."""
    for name in OUTPUT_NAMES:
        path = output_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


# ----------------------------------------------------------------------------------------------- callbacks


class StopAtStep(TrainerCallback):
    """Stop training after global step ``step`` and save a checkpoint there (the shared prefix of the branches)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if state.global_step >= self.step:
            control.should_save = True
            control.should_training_stop = True


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
    name = str(summary.get("recipe", ""))
    if summary.get("dataset"):
        name += f" ({summary['dataset']})"
    title = f"{name}: k = {summary.get('k')}, switch at step {summary.get('switch_step')} of {summary.get('max_steps')}"
    return title + "\n" + "\n".join(lines)


def _fmt(value: Any, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)
