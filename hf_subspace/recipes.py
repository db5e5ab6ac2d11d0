"""The recipes of the paper's experiments: shared arguments, the registry, argument parsing and the run.

A recipe is a name, the paper's default settings, and a ``prepare`` function that turns the arguments into a model
and datasets (:mod:`hf_subspace._recipe_builders`); :func:`run_recipe` hands them to
:func:`hf_subspace.experiment.run_experiment`. The scripts under ``recipes/`` are thin wrappers::

    recipe_args, training_args = parse_recipe_arguments("mlp_mnist")   # CLI flags and/or a YAML/JSON config
    prepared = prepare_recipe("mlp_mnist", recipe_args, training_args) # model + datasets
    run_recipe("mlp_mnist", recipe_args, training_args, prepared)      # prefix, branches, summary, figure

Arguments come from the recipe's defaults (the paper's settings), then a config file (a single ``.yaml``/``.json``
argument or ``--config FILE``), then command-line flags, each overriding the previous.

Unlike :class:`~hf_subspace.SubspaceTrainingArguments` (default 1,000), every recipe defaults ``hessian_num_samples``
to :data:`WHOLE_TRAINING_SET`: the Hessian, the full-batch gradient and the logged loss use the whole training subset
(``--num_train``), as in the paper. ``--hessian_num_samples N`` below the training-set size takes the trainer's seeded
subset of N examples instead (the logged loss is then the loss over that subset).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser

from ._branches import parse_modes
from .experiment import PREFIXES, ExperimentError, ExperimentResult, check_output_dir, parse_prefix, run_experiment
from .training_args import SubspaceTrainingArguments

__all__ = [
    "RECIPES",
    "WHOLE_TRAINING_SET",
    "PreparedRecipe",
    "Recipe",
    "RecipeArguments",
    "get_recipe",
    "load_config_file",
    "main",
    "parse_recipe_arguments",
    "prepare_recipe",
    "run_recipe",
    "validate_recipe",
]

logger = logging.getLogger(__name__)

WHOLE_TRAINING_SET = 1_000_000_000
"""The recipes' default ``hessian_num_samples``: larger than any training subset, i.e. the Hessian set is all of it."""


@dataclass
class RecipeArguments:
    """Experiment, data and model options shared by every recipe (the training options are
    :class:`~hf_subspace.SubspaceTrainingArguments`)."""

    modes: str = field(
        default="sgd,dominant,bulk",
        metadata={"help": "Comma-separated branches after the switch: sgd, dominant, bulk, gd, dominant-gd, bulk-gd."},
    )
    switch_step: int = field(
        default=1000, metadata={"help": "Step at which the branches leave the shared unprojected prefix."}
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
        default=None, metadata={"help": "MLP hidden layer widths, comma-separated (the paper: 200,200)."}
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
    plot: bool = field(default=True, metadata={"help": "Write the figure(s)."})

    def __post_init__(self) -> None:
        if self.standardize in ("none", "None", ""):
            self.standardize = None
        if self.standardize not in (None, "per_channel", "global"):
            raise ValueError(f"--standardize={self.standardize!r} must be per_channel, global or none.")
        if self.loss_type not in (None, "mse", "cross_entropy"):
            raise ValueError(f"--loss_type={self.loss_type!r} must be mse or cross_entropy.")
        if self.task not in (None, "text", "image"):
            raise ValueError(f"--task={self.task!r} must be text or image.")
        if self.num_train is not None and self.num_train < 1:
            raise ValueError(f"--num_train={self.num_train} must be at least 1.")
        parse_modes(self.modes)
        self.prefix = parse_prefix(self.prefix)


@dataclass
class PreparedRecipe:
    """A recipe's model and data, ready for :func:`~hf_subspace.experiment.run_experiment`."""

    model: Any
    train_dataset: Any
    eval_dataset: Any = None
    data_collator: Any = None
    processing_class: Any = None
    compute_loss_func: Callable[..., Any] | None = None
    dataset_name: str | None = None
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


def _registry() -> dict[str, Recipe]:
    from . import _recipe_builders as b

    common = {
        "optim": "sgd",
        "lr_scheduler_type": "constant",
        "max_grad_norm": 0.0,
        "weight_decay": 0.0,
        "per_device_train_batch_size": 50,
        "per_device_eval_batch_size": 500,
        "logging_steps": 100,
        "save_strategy": "no",
        "report_to": ["tensorboard"],
        "dataloader_pin_memory": False,
        "seed": 0,
        # The Hessian set is the whole training subset (the paper's); --hessian_num_samples N takes a subset.
        "hessian_num_samples": WHOLE_TRAINING_SET,
    }
    specs = [
        ("toy_quadratic", b.prepare_toy_quadratic, "2-D ill-conditioned valley, ±xy per-sample noise (k = 1)",
         {"max_steps": 1000, "switch_step": 100, "learning_rate": 1e-3, "per_device_train_batch_size": 1,
          "subspace_k": 1, "subspace_refresh_steps": 10, "subspace_alignment_steps": 25, "logging_steps": 50,
          "modes": "sgd,gd,dominant,bulk"}),
        ("mlp_mnist", b.prepare_mlp, "MLP 784-200-200-10 (tanh, MSE) on the first 5,000 MNIST images, k = 10",
         {"dataset_name": "mnist", "num_train": 5000, "hidden_sizes": "200,200", "activation": "tanh",
          "learning_rate": 0.01, "subspace_k": 10, "max_steps": 10000, "switch_step": 2000,
          "subspace_refresh_steps": 10, "subspace_alignment_steps": 200}),
        ("cnn_cifar10", b.prepare_cnn, "CNN (2× conv3-ReLU-pool + linear, MSE) on the first 5,000 CIFAR-10 images",
         {"dataset_name": "cifar10", "num_train": 5000, "learning_rate": 0.001, "subspace_k": 10,
          "max_steps": 10000, "switch_step": 2000, "subspace_refresh_steps": 10, "subspace_alignment_steps": 200}),
        ("transformer_sst2", b.prepare_transformer, "2-layer post-LN Transformer (MSE) on the first 1,000 SST-2 sentences",
         {"dataset_name": "sst2", "num_train": 1000, "tokenizer_name": "bert-base-uncased", "learning_rate": 0.001,
          "subspace_k": 2, "max_steps": 10000, "switch_step": 2000, "subspace_refresh_steps": 10,
          "subspace_alignment_steps": 200}),
        ("finetune", b.prepare_finetune, "fine-tune any Hub checkpoint (sequence or image classification)",
         {"dataset_name": "sst2", "num_train": 1000, "learning_rate": 1e-3, "per_device_train_batch_size": 16,
          "per_device_eval_batch_size": 64, "subspace_k": 2, "max_steps": 1000, "switch_step": 200,
          "subspace_refresh_steps": 10, "subspace_alignment_steps": 50, "hessian_batch_size": 64}),
    ]  # fmt: skip
    registry = {}
    for name, prepare, description, defaults in specs:
        merged = {**common, "output_dir": f"runs/{name}", **defaults}
        if name != "finetune":  # the paper's models use every parameter in every step
            merged.setdefault("ddp_find_unused_parameters", False)
        registry[name] = Recipe(name, description, merged, prepare)
    return registry


RECIPES: dict[str, Recipe] = _registry()


def get_recipe(name: str) -> Recipe:
    """The registered recipe ``name``.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    key = name.strip().lower().replace("-", "_")
    if key not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    return RECIPES[key]


# ----------------------------------------------------------------------------------------------- arguments


def _field_names() -> set[str]:
    names = {f.name for f in dataclasses.fields(RecipeArguments)}
    return names | {f.name for f in dataclasses.fields(SubspaceTrainingArguments) if f.init}


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config of recipe and training options.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: for a file that is not a mapping, or unknown option names (listed).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {p}")
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{p} must hold a mapping of option: value, got {type(data).__name__}")
    unknown = sorted(set(data) - _field_names() - {"recipe"})
    if unknown:
        raise ValueError(f"{p}: unknown option(s) {', '.join(unknown)}")
    return data


def _split_config(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    argv = list(argv)
    if len(argv) >= 1 and argv[0].endswith((".yaml", ".yml", ".json")) and not argv[0].startswith("-"):
        return argv[0], argv[1:]
    for i, item in enumerate(argv):
        if item == "--config":
            if i + 1 >= len(argv):
                raise ValueError("--config needs a file path")
            return argv[i + 1], argv[:i] + argv[i + 2 :]
        if item.startswith("--config="):
            return item.split("=", 1)[1], argv[:i] + argv[i + 1 :]
    return None, argv


def _has_accelerator() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return torch.cuda.is_available() or bool(mps is not None and mps.is_available())


def parse_recipe_arguments(
    recipe: str, argv: Sequence[str] | None = None
) -> tuple[RecipeArguments, SubspaceTrainingArguments]:
    """Parse a recipe's options: its defaults, then a config file, then command-line flags.

    Args:
        recipe: the recipe name (its defaults are the paper's settings).
        argv: the arguments (default ``sys.argv[1:]``): a single ``.yaml``/``.json`` path, and/or ``--config FILE``
            plus any ``--option value`` of :class:`RecipeArguments` and :class:`SubspaceTrainingArguments`.

    Returns:
        ``(recipe_args, training_args)``.
    """
    spec = get_recipe(recipe)
    config_path, rest = _split_config(sys.argv[1:] if argv is None else argv)
    defaults = dict(spec.defaults)
    if config_path:
        loaded = load_config_file(config_path)
        if loaded.get("recipe") not in (None, spec.name):
            raise ValueError(f"{config_path} is a config of recipe {loaded['recipe']!r}, not {spec.name!r}")
        loaded.pop("recipe", None)
        defaults.update(loaded)
    # Without an accelerator, use_cpu must be set for a multi-process launch to become CPU + gloo DDP (otherwise the
    # Trainer sees one process per rank and every rank writes everything).
    defaults.setdefault("use_cpu", not _has_accelerator())
    parser = HfArgumentParser((RecipeArguments, SubspaceTrainingArguments), prog=f"hf-subspace run {spec.name}")
    parser.set_defaults(**defaults)
    for action in parser._actions:
        if action.dest == "hessian_num_samples":
            action.help = (
                "Size of the fixed, seeded subset of the training set on which the Hessian, the full-batch gradient "
                "of chi_k and the logged loss (subspace/full_train_loss, the losses of summary.json) are computed; "
                "the same subset for the prefix and every branch. The recipes' default is larger than any training "
                "set: the whole training subset, as in the paper."
            )
    recipe_args, training_args = parser.parse_args_into_dataclasses(args=rest)
    return recipe_args, training_args


# ----------------------------------------------------------------------------------------------- running


def prepare_recipe(
    recipe: str, recipe_args: RecipeArguments, training_args: SubspaceTrainingArguments
) -> PreparedRecipe:
    """Build the recipe's model and datasets (files are checked and data loaded here, before any training).

    Raises:
        hf_subspace.data.DatasetLoadError: a dataset that cannot be loaded (with a hint to pass a local copy).
    """
    return get_recipe(recipe).prepare(recipe_args, training_args)


def validate_recipe(recipe: str, recipe_args: RecipeArguments, training_args: SubspaceTrainingArguments) -> None:
    """Cheap checks before any data loading or training: recipe name, modes, local files, ``output_dir``.

    Raises:
        ExperimentError: unknown recipe or mode, missing file, refused ``output_dir``, missing finetune checkpoint.
    """
    try:
        spec = get_recipe(recipe)
        parse_modes(recipe_args.modes)
        parse_prefix(recipe_args.prefix)
    except ValueError as err:
        raise ExperimentError(str(err)) from None
    for option in ("train_file", "validation_file"):
        value = getattr(recipe_args, option)
        if value and not Path(value).expanduser().exists():
            raise ExperimentError(f"--{option} {value!r} does not exist.")
    if spec.name == "finetune" and not recipe_args.model_name_or_path:
        raise ExperimentError("the finetune recipe needs --model_name_or_path (a Hub checkpoint or a local folder).")
    check_output_dir(training_args.output_dir, recipe_args.overwrite_output_dir)


def run_recipe(
    recipe: str,
    recipe_args: RecipeArguments,
    training_args: SubspaceTrainingArguments,
    prepared: PreparedRecipe | None = None,
    print_table: bool = True,
) -> ExperimentResult:
    """Validate, prepare (unless given), and run the recipe's experiment; print the results table on rank 0.

    :func:`validate_recipe` runs first, so a refused ``output_dir`` or a missing file costs no data loading.
    """
    validate_recipe(recipe, recipe_args, training_args)
    spec = get_recipe(recipe)
    if prepared is None:
        prepared = prepare_recipe(spec.name, recipe_args, training_args)
    result = run_experiment(
        prepared.model,
        training_args,
        prepared.train_dataset,
        switch_step=recipe_args.switch_step,
        modes=recipe_args.modes,
        prefix=recipe_args.prefix,
        recipe=spec.name,
        eval_dataset=prepared.eval_dataset,
        data_collator=prepared.data_collator,
        processing_class=prepared.processing_class,
        compute_loss_func=prepared.compute_loss_func,
        overwrite_output_dir=recipe_args.overwrite_output_dir,
        record_trajectory=prepared.record_trajectory,
        dataset_name=prepared.dataset_name,
        extras=prepared.extras,
        metadata={"recipe_args": dataclasses.asdict(recipe_args)},
        plot=recipe_args.plot,
    )
    if result.summary_path is not None:
        if prepared.after is not None and recipe_args.plot:
            prepared.after(result)
        if print_table:
            print(result.table())
            print(
                f"summary: {result.summary_path}" + (f"\nfigure:  {result.figure_path}" if result.figure_path else "")
            )
    return result


def main(recipe: str, argv: Sequence[str] | None = None) -> ExperimentResult:
    """Parse the arguments, validate, build the model and data, and run the recipe."""
    recipe_args, training_args = parse_recipe_arguments(recipe, argv)
    validate_recipe(recipe, recipe_args, training_args)
    prepared = prepare_recipe(recipe, recipe_args, training_args)
    return run_recipe(recipe, recipe_args, training_args, prepared)
