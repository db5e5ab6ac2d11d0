"""The recipes of the paper's experiments: the registry, argument parsing and the run.

A recipe is a name, the paper's default settings (:data:`~hf_subspace.experiments.settings.RECIPE_SPECS`), and a
``prepare`` function that turns the arguments (:class:`~hf_subspace.experiments.arguments.RecipeArguments`) into a
model and datasets (:mod:`hf_subspace.experiments.builders`); :func:`run_recipe` hands them to
:func:`hf_subspace.experiments.experiment.run_experiment`. The scripts under ``recipes/`` call :func:`main`, which is::

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

import argparse
import dataclasses
import difflib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser

from ..training_args import SubspaceTrainingArguments
from . import builders
from ._hub import ensure_hub_or_offline
from .arguments import PreparedRecipe, Recipe, RecipeArguments
from .experiment import ExperimentResult, run_experiment
from .settings import (
    RECIPE_SPECS,
    WHOLE_TRAINING_SET,
    ExperimentError,
    check_output_dir,
    recipe_name,
)

__all__ = [
    "RECIPES",
    "WHOLE_TRAINING_SET",
    "PreparedRecipe",
    "Recipe",
    "RecipeArguments",
    "console_main",
    "get_recipe",
    "load_config_file",
    "main",
    "parse_recipe_arguments",
    "prepare_recipe",
    "run_recipe",
    "validate_recipe",
]

logger = logging.getLogger(__name__)

RECIPES: dict[str, Recipe] = {
    name: Recipe(name, spec.description, spec.defaults, getattr(builders, spec.builder))
    for name, spec in RECIPE_SPECS.items()
}
"""The registered recipes: :data:`~hf_subspace.experiments.settings.RECIPE_SPECS` with their builders."""


def get_recipe(name: str) -> Recipe:
    """The registered recipe ``name``.

    Raises:
        ExperimentError: for an unknown name, listing the known ones (:func:`~.settings.recipe_name`).
    """
    return RECIPES[recipe_name(name)]


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


_DATA_OPTIONS = {"dataset_name", "train_file", "validation_file", "num_train", "num_validation", "loss_type"}
_IMAGE_OPTIONS = _DATA_OPTIONS | {"standardize"}
_TEXT_OPTIONS = _DATA_OPTIONS | {"tokenizer_name", "max_seq_length", "text_column", "label_column"}
RECIPE_OPTIONS: dict[str, set[str]] = {
    "prepare_toy_quadratic": {"num_train", "model_name_or_path"},
    "prepare_mlp": _IMAGE_OPTIONS | {"hidden_sizes", "activation"},
    "prepare_cnn": _IMAGE_OPTIONS,
    "prepare_transformer": _TEXT_OPTIONS,
    "prepare_finetune": _TEXT_OPTIONS | {"model_name_or_path", "task"},
    "prepare_vit": _IMAGE_OPTIONS | {"hidden_sizes"},
}
"""The data and model options of :class:`RecipeArguments` each builder reads; ``--help`` of a recipe lists only
those (the others are still accepted). A builder not listed shows them all."""

_GENERAL_OPTIONS = {
    "modes",
    "switch_step",
    "switch_rule",
    "basis_audit_steps",
    "prefix",
    "overwrite_output_dir",
    "plot",
    "experiment_name",
}


class _RecipeParser(HfArgumentParser):
    """``HfArgumentParser`` whose errors are one short line (an :class:`ExperimentError`, no 150-line usage) and
    which refuses abbreviated option names."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ExperimentError(f"{message} (`{self.prog} --help` lists the options)")


def _given_on_command_line(argv: Sequence[str], option: str) -> bool:
    spellings = {f"--{option}", f"--{option.replace('_', '-')}"}
    return any(item.split("=", 1)[0] in spellings for item in argv)


def _launched_processes() -> int:
    """The number of processes of this launch (``WORLD_SIZE`` set by ``torchrun`` / ``accelerate launch``)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


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

    Under ``torchrun`` / ``accelerate launch`` with N processes, the recipe's (or config's) batch is the paper's
    global batch and each process gets 1/N of it (with a warning, unchanged, when it does not divide); a
    ``--per_device_train_batch_size`` on the command line is per process. Option names must be spelled out in full.

    Returns:
        ``(recipe_args, training_args)``.

    Raises:
        ExperimentError: an invalid or abbreviated option, or an invalid value (one line naming it, no usage text).
        ValueError: an invalid recipe option value (e.g. ``--standardize``), a config of another recipe.
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
    # The recipe's (or config's) batch is the paper's GLOBAL batch: with several processes each gets its share, so
    # two processes train with the same 50 examples per step as one. A command-line value is per process.
    processes = _launched_processes()
    if processes > 1 and not _given_on_command_line(rest, "per_device_train_batch_size"):
        global_batch = int(defaults.get("per_device_train_batch_size", 8))
        if global_batch % processes == 0:
            defaults["per_device_train_batch_size"] = global_batch // processes
        elif os.environ.get("RANK", "0") == "0":
            logger.warning(
                "the %s recipe's global batch of %d cannot be split evenly over %d processes: each process takes %d, "
                "so the global batch is %d; pass --per_device_train_batch_size N to choose (global batch %d·N).",
                spec.name, global_batch, processes, global_batch, global_batch * processes, processes,
            )  # fmt: skip
    parser = _RecipeParser(
        (RecipeArguments, SubspaceTrainingArguments), prog=f"hf-subspace run {spec.name}", allow_abbrev=False
    )
    parser.set_defaults(**defaults)
    shown = RECIPE_OPTIONS.get(getattr(spec.prepare, "__name__", ""))
    recipe_fields = {f.name for f in dataclasses.fields(RecipeArguments)}
    for action in parser._actions:
        if action.dest == "hessian_num_samples":
            action.help = (
                "Size of the fixed, seeded subset of the training set on which the Hessian, the full-batch gradient "
                "of chi_k and the logged loss (subspace/full_train_loss, the losses of summary.json) are computed; "
                "the same subset for the prefix and every branch. The recipes' default is larger than any training "
                "set: the whole training subset, as in the paper."
            )
        elif action.dest == "per_device_train_batch_size":
            action.help = (
                "Training batch per process. The recipe's (or config's) value is the paper's global batch: with N "
                "processes each process takes 1/N of it; a value given here on the command line is per process "
                "(global batch = N × it)."
            )
        elif action.dest == "plot" and "--no_plot" in action.option_strings:
            action.help = "Write no figures."
        elif shown is not None and action.dest in recipe_fields - _GENERAL_OPTIONS - shown:
            action.help = argparse.SUPPRESS  # another recipe's data/model option: accepted, not listed
    recipe_args, training_args, remaining = parser.parse_args_into_dataclasses(args=rest, return_remaining_strings=True)
    if remaining:
        known = [o for action in parser._actions for o in action.option_strings if o.startswith("--")]
        hints = []
        for item in remaining:
            if item.startswith("-"):
                close = difflib.get_close_matches(item.split("=", 1)[0], known, n=1)
                hints.append(f"{item}" + (f" (did you mean {close[0]}?)" if close else ""))
        raise ExperimentError(
            f"unknown option(s) {', '.join(hints) or ' '.join(remaining)}: options must be spelled out in full "
            f"(`hf-subspace run {spec.name} --help` lists them)."
        )
    return recipe_args, training_args


# ----------------------------------------------------------------------------------------------- running


def prepare_recipe(
    recipe: str, recipe_args: RecipeArguments, training_args: SubspaceTrainingArguments
) -> PreparedRecipe:
    """Build the recipe's model and datasets (files are checked and data loaded here, before any training).

    Raises:
        hf_subspace.experiments.data.DatasetLoadError: a dataset that cannot be loaded (with a hint to pass a local copy).
    """
    ensure_hub_or_offline()  # no network: offline at once (one quick check) instead of minutes of Hub retries
    return get_recipe(recipe).prepare(recipe_args, training_args)


def validate_recipe(recipe: str, recipe_args: RecipeArguments, training_args: SubspaceTrainingArguments) -> None:
    """The recipe path's gate, before any data loading or training: recipe name, local files, finetune checkpoint,
    ``output_dir`` (modes and prefix were normalised when :class:`RecipeArguments` was built; the model-dependent
    rules are the experiment's and the trainer's).

    Raises:
        ExperimentError: unknown recipe, missing file, refused ``output_dir``, missing finetune checkpoint.
    """
    spec = get_recipe(recipe)
    for option in ("train_file", "validation_file"):
        value = getattr(recipe_args, option)
        if value and not Path(value).expanduser().exists():
            raise ExperimentError(f"--{option} {value!r} does not exist.")
    if spec.name == "finetune" and not recipe_args.model_name_or_path:
        raise ExperimentError("the finetune recipe needs --model_name_or_path (a Hub checkpoint or a local folder).")
    check_output_dir(training_args.output_dir, recipe_args.overwrite_output_dir or recipe_args.resume_experiment)


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
    loss_type = recipe_args.loss_type or getattr(getattr(prepared.model, "config", None), "loss_type", None)
    result = run_experiment(
        prepared.model,
        training_args,
        prepared.train_dataset,
        switch_step=recipe_args.switch_step,
        switch_rule=recipe_args.switch_rule,
        basis_audit_steps=recipe_args.basis_audit_steps,
        switch_measure_steps=recipe_args.switch_measure_steps,
        resume=recipe_args.resume_experiment,
        modes=recipe_args.modes,
        prefix=recipe_args.prefix,
        recipe=spec.name,
        eval_dataset=prepared.eval_dataset,
        data_collator=prepared.data_collator,
        processing_class=prepared.processing_class,
        compute_loss_func=prepared.compute_loss_func,
        overwrite_output_dir=recipe_args.overwrite_output_dir,
        output_dir_checked=True,  # validate_recipe refused an occupied output_dir before the data was loaded
        record_trajectory=prepared.record_trajectory,
        dataset_name=prepared.dataset_name,
        extras={
            "dataset_description": prepared.dataset_description,
            "loss": prepared.loss,
            "loss_type": loss_type,
            **prepared.extras,
        },
        metadata={"recipe_args": _resolved_arguments(recipe_args, loss_type), "loss": prepared.loss},
        plot=recipe_args.plot,
        name=recipe_args.experiment_name or spec.name,
        card_description=_card_description(prepared, recipe_args.experiment_name or spec.name, spec.name),
        dataset_tags=prepared.dataset_tags,
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


_PATH_OPTIONS = ("train_file", "validation_file", "dataset_name", "tokenizer_name", "model_name_or_path")


def _resolved_arguments(recipe_args: RecipeArguments, loss_type: str | None) -> dict[str, Any]:
    """The recipe arguments as saved in ``hf_subspace_experiment.json``: local paths made absolute (so
    ``hf-subspace spectrum`` finds the data from any folder) and the loss actually trained."""
    record = dataclasses.asdict(recipe_args)
    for key in _PATH_OPTIONS:
        value = record.get(key)
        if isinstance(value, str) and value and Path(value).expanduser().exists():
            record[key] = str(Path(value).expanduser().resolve())
    record["loss_type"] = loss_type
    return record


def _card_description(prepared: PreparedRecipe, name: str, recipe: str) -> str:
    """The paragraph at the top of every branch card: the experiment, its data and its loss."""
    lines = [f"Experiment `{name}` (recipe `{recipe}` of hf-subspace)."]
    if prepared.dataset_description:
        lines.append(f"Training data: {prepared.dataset_description}.")
    if prepared.loss:
        lines.append(f"Loss: {prepared.loss}.")
    return " ".join(lines)


def console_main(recipe: str, argv: Sequence[str] | None = None) -> int:
    """Run a recipe from a command line and return the exit status: the one error path of every entry point.

    ``hf-subspace run``, ``python recipes/<recipe>.py`` and ``accelerate launch recipes/<recipe>.py`` all end here:
    an invalid option, a missing file or an unloadable dataset (``ValueError``, including :class:`ExperimentError`
    and ``DatasetLoadError``, or ``OSError``) prints ONE line ``error: ...`` on stderr (from the first process only)
    and returns 2; ``HF_SUBSPACE_DEBUG=1`` re-raises it with its traceback instead. ``--help`` exits 0.
    """
    try:
        main(recipe, argv)
    except (ValueError, OSError) as err:
        if os.environ.get("HF_SUBSPACE_DEBUG"):
            raise
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    return 0


def main(recipe: str, argv: Sequence[str] | None = None) -> ExperimentResult:
    """Parse the arguments, validate, build the model and data, and run the recipe."""
    recipe_args, training_args = parse_recipe_arguments(recipe, argv)
    return run_recipe(recipe, recipe_args, training_args)
