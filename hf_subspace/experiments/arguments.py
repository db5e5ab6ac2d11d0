"""The recipes' arguments and what a recipe builder returns (shared by :mod:`~hf_subspace.experiments.recipes` and
:mod:`~hf_subspace.experiments.builders`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .settings import DEFAULT_MODES, PREFIXES, ExperimentError, parse_modes, parse_prefix

if TYPE_CHECKING:
    from ..training_args import SubspaceTrainingArguments

__all__ = ["SWITCH_RULES", "ExperimentPlan", "PreparedRecipe", "Recipe", "RecipeArguments"]


SWITCH_RULES = ("fixed", "ema")


@dataclass
class ExperimentPlan:
    """How :func:`~hf_subspace.experiments.experiment.run_experiment` runs the protocol: the switch, the branches,
    the prefix, and what it writes. Normalised and checked once, when built (the branch names and the prefix by
    :func:`~.settings.parse_modes` / :func:`~.settings.parse_prefix`); the checks that need the training arguments
    (steps, output folder, processes) are the runner's, before any data is loaded.

    Raises:
        ExperimentError: an unknown branch or prefix, an invalid switch rule or audit interval.
    """

    modes: str = field(
        default=",".join(DEFAULT_MODES),
        metadata={
            "help": "Comma-separated branches after the switch: sgd, dominant, bulk, gd, dominant-gd, bulk-gd (a list "
            "of names also works in Python)."
        },
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
            "choices": list(SWITCH_RULES),
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
            "resume an unfinished branch from its latest checkpoint (saved with --save_strategy steps). Only --modes, "
            "--basis_audit_steps and the output options may differ from the run continued; other changes are refused."
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
        metadata={
            "help": "Replace the results of an earlier experiment in --output_dir (otherwise it is an error); what "
            "is removed is listed first."
        },
    )
    plot: bool = field(default=True, metadata={"help": "Write the figure(s) (the default); --no_plot writes none."})
    experiment_name: str | None = field(
        default=None,
        metadata={
            "help": "Title of the experiment in summary.json, the results table, the figure and the model cards "
            "(<name>-<branch>). Default: the recipe's name."
        },
    )
    recipe: str = field(default="custom", metadata={"help": "The recipe's name (summary.json, cards, figure)."})

    def __post_init__(self) -> None:
        self.modes = ",".join(parse_modes(self.modes))
        self.prefix = parse_prefix(self.prefix)
        if self.switch_rule not in SWITCH_RULES:
            raise ExperimentError(f"--switch_rule={self.switch_rule!r} must be fixed or ema.")
        if self.switch_measure_steps < 1:
            raise ExperimentError(f"--switch_measure_steps={self.switch_measure_steps} must be at least 1.")
        if self.basis_audit_steps < 0:
            raise ExperimentError(f"--basis_audit_steps={self.basis_audit_steps} must be 0 (never) or positive.")

    @property
    def branches(self) -> list[str]:
        """The branch kinds, in order (keys of :data:`~.settings.BRANCHES`)."""
        return self.modes.split(",")

    @property
    def title(self) -> str:
        """The experiment's name: ``experiment_name``, else the recipe's."""
        return self.experiment_name or self.recipe


@dataclass
class RecipeArguments(ExperimentPlan):
    """A recipe's options: the protocol (:class:`ExperimentPlan`) and the data and model options shared by every
    recipe (the training options are :class:`~hf_subspace.SubspaceTrainingArguments`). Checked when parsed.

    Raises:
        ExperimentError: (a ``ValueError``) an invalid value, a local file that does not exist.
    """

    recipe: str = field(default="custom", init=False)  # set by the parser: not an option
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

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.standardize in ("none", "None", ""):
            self.standardize = None
        if self.standardize not in (None, "per_channel", "global"):
            raise ExperimentError(f"--standardize={self.standardize!r} must be per_channel, global or none.")
        if self.loss_type not in (None, "mse", "cross_entropy"):
            raise ExperimentError(f"--loss_type={self.loss_type!r} must be mse or cross_entropy.")
        if self.task not in (None, "text", "image"):
            raise ExperimentError(f"--task={self.task!r} must be text or image.")
        if self.num_train is not None and self.num_train < 1:
            raise ExperimentError(f"--num_train={self.num_train} must be at least 1.")
        for option in ("train_file", "validation_file"):
            value = getattr(self, option)
            if value and not Path(value).expanduser().exists():
                raise ExperimentError(f"--{option} {value!r} does not exist.")


@dataclass
class PreparedRecipe:
    """A model and its data, ready for :func:`~hf_subspace.experiments.experiment.run_experiment` (what a recipe's
    builder returns; build one directly to run the protocol on your own model).

    Attributes:
        model: the model, or a function returning a fresh one; each run trains its own copy.
        train_dataset: the training set (a ``datasets.Dataset`` of numeric columns becomes a :class:`TensorDataset`).
        eval_dataset: optional validation set: each branch reports ``eval_accuracy`` and ``eval_loss`` at the end.
        hessian_dataset: the set of the Hessian, the full-batch gradient and the logged loss, shared by every run
            (default: :func:`~hf_subspace.experiments.experiment.hessian_subset`).
        data_collator, processing_class, compute_loss_func: as for ``Trainer`` (the Hessian uses the same loss).
        compute_metrics: evaluation metrics (default: accuracy through ``evaluate`` when there is an eval set).
    """

    model: Any
    train_dataset: Any
    eval_dataset: Any = None
    hessian_dataset: Any = None
    data_collator: Any = None
    processing_class: Any = None
    compute_loss_func: Callable[..., Any] | None = None
    compute_metrics: Callable[[Any], dict[str, float]] | None = None
    dataset_name: str | None = None
    """A short name of the data (the table and figure titles): ``digits``, ``mnist``, ``train.npz``, ..."""
    dataset_description: str | None = None
    """What the data is, for the model cards: source, which examples, validation set."""
    dataset_tags: list[str] = field(default_factory=list)
    """Hub dataset ids (only for data loaded from the Hub), for the cards' metadata."""
    loss: str | None = None
    """The loss function trained (and whose Hessian is taken), in words."""
    extras: dict[str, Any] = field(default_factory=dict)
    """More top-level entries of ``summary.json``."""
    record_trajectory: bool = False
    """Record the parameters at every step (models of at most 16 parameters): ``ExperimentResult.trajectories``."""
    after: Callable[[Any], list[Path]] | None = None
    """Called on rank 0 with the :class:`~.experiment.ExperimentResult` when figures are written; returns the extra
    files it wrote (e.g. the toy's trajectory plot)."""


@dataclass(frozen=True)
class Recipe:
    """A registered recipe: ``prepare(recipe_args, training_args) -> PreparedRecipe`` and the paper's defaults."""

    name: str
    description: str
    defaults: Mapping[str, Any]
    prepare: Callable[[RecipeArguments, SubspaceTrainingArguments], PreparedRecipe]
    options: frozenset[str] = frozenset()
    """The data and model options its builder reads (``--help`` lists only those)."""
    required: tuple[str, ...] = ()
    """Options it cannot run without."""
