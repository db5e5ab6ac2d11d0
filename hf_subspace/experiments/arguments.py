"""The recipes' arguments and what a recipe builder returns (shared by :mod:`~hf_subspace.experiments.recipes` and
:mod:`~hf_subspace.experiments.builders`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .settings import PREFIXES, parse_modes, parse_prefix

if TYPE_CHECKING:
    from ..training_args import SubspaceTrainingArguments
    from .experiment import ExperimentResult

__all__ = ["PreparedRecipe", "Recipe", "RecipeArguments"]


@dataclass
class RecipeArguments:
    """Experiment, data and model options shared by every recipe (the training options are
    :class:`~hf_subspace.SubspaceTrainingArguments`)."""

    modes: str = field(
        default="sgd,dominant,bulk",
        metadata={"help": "Comma-separated branches after the switch: sgd, dominant, bulk, gd, dominant-gd, bulk-gd."},
    )
    switch_step: int = field(
        default=1000,
        metadata={
            "help": "Step at which the branches leave the shared unprojected prefix (with --switch_rule ema: the "
            "latest step, a cap)."
        },
    )
    switch_rule: str = field(
        default="fixed",
        metadata={
            "help": "When the branches leave the prefix: fixed (at --switch_step) or ema (the paper's rule: once the "
            "EMA of χ_k of the full-batch gradient, measured at every prefix step with decay --subspace_ema_decay, "
            "reaches --subspace_auto_start_threshold; at --switch_step at the latest).",
            "choices": ["fixed", "ema"],
        },
    )
    prefix: str = field(
        default="sgd",
        metadata={
            "help": "Optimizer of the shared prefix up to --switch_step: sgd (minibatches of "
            "--per_device_train_batch_size, the paper's protocol) or gd (full-batch gradient descent, for the GD→SGD "
            "comparison, e.g. --prefix gd --modes sgd,gd).",
            "choices": list(PREFIXES),
        },
    )
    switch_measure_steps: int = field(
        default=1,
        metadata={
            "help": "With --switch_rule ema: measure χ_k (and update its EMA) every this many prefix steps (the "
            "paper: 1)."
        },
    )
    resume_experiment: bool = field(
        default=False,
        metadata={
            "help": "Continue an interrupted experiment in --output_dir: reuse its finished prefix and branches, and "
            "resume an unfinished branch from its latest checkpoint (saved with --save_strategy steps)."
        },
    )
    basis_audit_steps: int = field(
        default=0,
        metadata={
            "help": "Every N steps of a projected branch, solve the top-k eigenspace from scratch (eigsh) and record "
            "the distance of the basis in use to it (summary.json: basis_error_audit). 0: never."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace the results of an earlier experiment in --output_dir (otherwise it is an error)."},
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset (mnist, cifar10, sst2, ...), 'digits' (scikit-learn, offline), or a local file or "
            "folder. Default: the recipe's dataset."
        },
    )
    train_file: str | None = field(
        default=None,
        metadata={"help": "Local training data: .npz (arrays x, y), IDX, TSV/CSV/JSON/parquet, or a datasets folder."},
    )
    validation_file: str | None = field(default=None, metadata={"help": "Local validation data (same formats)."})
    num_train: int | None = field(
        default=None, metadata={"help": "Use the FIRST num_train training examples (the paper: 5,000 or 1,000)."}
    )
    num_validation: int | None = field(
        default=None, metadata={"help": "Evaluate on the first num_validation validation examples (default: all)."}
    )
    standardize: str | None = field(
        default="per_channel",
        metadata={"help": "Image standardisation with training-subset statistics: per_channel, global or none."},
    )
    loss_type: str | None = field(
        default=None,
        metadata={
            "help": "mse (the paper's: ½·Σ over classes, one-hot targets) or cross_entropy. Default: mse for the "
            "paper's models, the model's own loss for finetune."
        },
    )
    hidden_sizes: str | None = field(
        default=None,
        metadata={
            "help": "MLP hidden layer widths, comma-separated (the paper: 200,200); vit_cifar10: hidden size and "
            "number of layers (default 64,2)."
        },
    )
    activation: str | None = field(default=None, metadata={"help": "MLP hidden activation (the paper: tanh)."})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "finetune: a Hub checkpoint or local folder to fine-tune."}
    )
    task: str | None = field(
        default=None,
        metadata={"help": "finetune: 'text' (sequence classification) or 'image' (image classification). Default: "
                  "guessed from the checkpoint's config."},
    )  # fmt: skip
    tokenizer_name: str | None = field(
        default=None,
        metadata={"help": "Tokenizer (Hub name or folder); if it cannot be loaded, a word-level tokenizer is trained "
                  "offline on the training sentences."},
    )  # fmt: skip
    max_seq_length: int = field(default=64, metadata={"help": "Token sequences are padded/truncated to this length."})
    text_column: str = field(default="sentence", metadata={"help": "Text column of a local text dataset."})
    label_column: str = field(default="label", metadata={"help": "Label column of a local text dataset."})
    plot: bool = field(default=True, metadata={"help": "Write the figure(s) (the default); --no_plot writes none."})
    experiment_name: str | None = field(
        default=None,
        metadata={
            "help": "Title of the experiment in summary.json, the results table, the figure and the model cards "
            "(<name>-<branch>). Default: the recipe's name."
        },
    )

    def __post_init__(self) -> None:
        if self.standardize in ("none", "None", ""):
            self.standardize = None
        if self.standardize not in (None, "per_channel", "global"):
            raise ValueError(f"--standardize={self.standardize!r} must be per_channel, global or none.")
        if self.loss_type not in (None, "mse", "cross_entropy"):
            raise ValueError(f"--loss_type={self.loss_type!r} must be mse or cross_entropy.")
        if self.task not in (None, "text", "image"):
            raise ValueError(f"--task={self.task!r} must be text or image.")
        if self.switch_rule not in ("fixed", "ema"):
            raise ValueError(f"--switch_rule={self.switch_rule!r} must be fixed or ema.")
        if self.switch_measure_steps < 1:
            raise ValueError(f"--switch_measure_steps={self.switch_measure_steps} must be at least 1.")
        if self.num_train is not None and self.num_train < 1:
            raise ValueError(f"--num_train={self.num_train} must be at least 1.")
        # The recipe path's gate for the branch names and the prefix: normalised once, here, when parsed.
        self.modes = ",".join(parse_modes(self.modes))
        self.prefix = parse_prefix(self.prefix)


@dataclass
class PreparedRecipe:
    """A recipe's model and data, ready for :func:`~hf_subspace.experiments.experiment.run_experiment`."""

    model: Any
    train_dataset: Any
    eval_dataset: Any = None
    data_collator: Any = None
    processing_class: Any = None
    compute_loss_func: Callable[..., Any] | None = None
    dataset_name: str | None = None
    """A short name of the data (the table and figure titles): ``digits``, ``mnist``, ``train.npz``, ..."""
    dataset_description: str | None = None
    """What the data is, for the model cards: source, which examples, validation set."""
    dataset_tags: list[str] = field(default_factory=list)
    """Hub dataset ids (only for data loaded from the Hub), for the cards' metadata."""
    loss: str | None = None
    """The loss function trained (and whose Hessian is taken), in words."""
    extras: dict[str, Any] = field(default_factory=dict)
    record_trajectory: bool = False
    after: Callable[[ExperimentResult], list[Path]] | None = None
    """Called on rank 0 with the result; returns extra files written (e.g. the toy's trajectory plot)."""


@dataclass(frozen=True)
class Recipe:
    """A registered recipe: ``prepare(recipe_args, training_args) -> PreparedRecipe`` and the paper's defaults."""

    name: str
    description: str
    defaults: Mapping[str, Any]
    prepare: Callable[[RecipeArguments, SubspaceTrainingArguments], PreparedRecipe]
    runtime: str = ""
