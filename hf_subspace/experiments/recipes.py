"""The recipes of the paper's experiments: the registry, argument parsing and the run.

A recipe is a name, its settings (:data:`~hf_subspace.experiments.settings.RECIPE_SPECS`, the one source of its
defaults) and a ``prepare`` function that turns the arguments (:class:`~hf_subspace.experiments.arguments.RecipeArguments`)
into a model and datasets (:mod:`hf_subspace.experiments.builders`). The data flows one way::

    recipe = get_recipe("mlp_mnist")                                   # once per run
    recipe_args, training_args = parse_recipe_arguments(recipe, argv)  # defaults < config file < flags; checked
    run_recipe(recipe, recipe_args, training_args)                     # run_experiment(prepare, args, plan)

The recipe's own options (:class:`RecipeArguments`, plain Python) are parsed and checked before torch and
transformers are imported, so a wrong branch name, prefix or missing file fails at once; the training options
(:class:`~hf_subspace.SubspaceTrainingArguments`) follow. :func:`~.experiment.run_experiment` checks them against
the plan and the output folder before it calls the recipe's builder, so a refused ``output_dir`` costs no data loading.

Unlike :class:`~hf_subspace.SubspaceTrainingArguments` (default 1,000), every recipe defaults ``hessian_num_samples``
to :data:`WHOLE_TRAINING_SET`: the Hessian, the full-batch gradient and the logged loss use the whole training subset
(``--num_train``), as in the paper. ``--hessian_num_samples N`` below the training-set size takes the trainer's seeded
subset of N examples instead (the logged loss is then the loss over that subset).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import HfArgumentParser

from ._hub import ensure_hub_or_offline
from .arguments import ExperimentPlan, PreparedRecipe, Recipe, RecipeArguments
from .settings import RECIPE_SPECS, WHOLE_TRAINING_SET, ExperimentError, recipe_name

if TYPE_CHECKING:
    from ..training_args import SubspaceTrainingArguments
    from .experiment import ExperimentResult

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
    "recipe_parser",
    "run_recipe",
]

logger = logging.getLogger(__name__)


def _builder(name: str) -> Any:
    """The builder ``name`` of :mod:`~.builders`, imported when first called (it needs torch and the data stack)."""

    def prepare(recipe_args: RecipeArguments, training_args: SubspaceTrainingArguments) -> PreparedRecipe:
        from . import builders

        return getattr(builders, name)(recipe_args, training_args)  # type: ignore[no-any-return]

    prepare.__name__ = prepare.__qualname__ = name
    return prepare


RECIPES: dict[str, Recipe] = {
    name: Recipe(name, spec.description, spec.defaults, _builder(spec.builder), spec.options, spec.required)
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


def _training_fields() -> set[str]:
    from ..training_args import SubspaceTrainingArguments

    return {f.name for f in dataclasses.fields(SubspaceTrainingArguments) if f.init}


_PLAN_FIELDS = {f.name for f in dataclasses.fields(RecipeArguments) if f.init}


def load_config_file(path: str | Path, check_names: bool = True) -> dict[str, Any]:
    """Read a YAML or JSON config of recipe and training options.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: for a file that is not a mapping, or (``check_names``) unknown option names (listed).
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
    if check_names:
        _refuse_unknown_names(data, p)
    return data


def _refuse_unknown_names(data: Mapping[str, Any], path: Path) -> None:
    unknown = sorted(set(data) - _PLAN_FIELDS - _training_fields() - {"recipe"})
    if unknown:
        raise ValueError(f"{path}: unknown option(s) {', '.join(unknown)}")


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


_GENERAL_OPTIONS = {f.name for f in dataclasses.fields(ExperimentPlan)}
_HELP = {
    "hessian_num_samples": (
        "Size of the fixed, seeded subset of the training set on which the Hessian, the full-batch gradient of chi_k "
        "and the logged loss (subspace/full_train_loss, the losses of summary.json) are computed; the same subset "
        "for the prefix and every branch. The recipes' default is larger than any training set: the whole training "
        "subset, as in the paper."
    ),
    "per_device_train_batch_size": (
        "Training batch per process. The recipe's (or config's) value is the paper's global batch: with N processes "
        "each process takes 1/N of it; a value given here on the command line is per process (global batch = N × it)."
    ),
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


def _recipe_defaults(recipe: Recipe, config_path: str | None) -> dict[str, Any]:
    """The recipe's defaults, then a config file's values."""
    defaults = dict(recipe.defaults)
    if config_path:
        loaded = load_config_file(config_path, check_names=False)
        if loaded.get("recipe") not in (None, recipe.name):
            raise ValueError(f"{config_path} is a config of recipe {loaded['recipe']!r}, not {recipe.name!r}")
        loaded.pop("recipe", None)
        defaults.update(loaded)
    return defaults


def _training_defaults(recipe: Recipe, defaults: dict[str, Any], rest: Sequence[str]) -> dict[str, Any]:
    """The training options' defaults of this launch: CPU + gloo without an accelerator, and the recipe's batch as
    the global batch over the launched processes."""
    # Without an accelerator, use_cpu must be set for a multi-process launch to become CPU + gloo DDP (otherwise the
    # Trainer sees one process per rank and every rank writes everything).
    defaults = {k: v for k, v in defaults.items() if k not in _PLAN_FIELDS}
    defaults.setdefault("use_cpu", not _has_accelerator())
    processes = _launched_processes()
    if processes > 1 and not _given_on_command_line(rest, "per_device_train_batch_size"):
        global_batch = int(defaults.get("per_device_train_batch_size", 8))
        if global_batch % processes == 0:
            defaults["per_device_train_batch_size"] = global_batch // processes
        elif os.environ.get("RANK", "0") == "0":
            logger.warning(
                "the %s recipe's global batch of %d cannot be split evenly over %d processes: each process takes %d, "
                "so the global batch is %d; pass --per_device_train_batch_size N to choose (global batch %d·N).",
                recipe.name, global_batch, processes, global_batch, global_batch * processes, processes,
            )  # fmt: skip
    return defaults


def recipe_parser(recipe: Recipe | str, defaults: Mapping[str, Any] | None = None) -> HfArgumentParser:
    """The full option parser of a recipe (its ``--help``): :class:`RecipeArguments` and
    :class:`~hf_subspace.SubspaceTrainingArguments`, with the recipe's defaults (or ``defaults``) set."""
    from ..training_args import SubspaceTrainingArguments

    spec = recipe if isinstance(recipe, Recipe) else get_recipe(recipe)
    parser = _RecipeParser(
        (RecipeArguments, SubspaceTrainingArguments), prog=f"hf-subspace run {spec.name}", allow_abbrev=False
    )
    parser.set_defaults(**(spec.defaults if defaults is None else defaults))
    for action in parser._actions:
        if action.dest in _HELP:
            action.help = _HELP[action.dest]
        elif action.dest == "plot" and "--no_plot" in action.option_strings:
            action.help = "Write no figures."
        elif spec.options and action.dest in _PLAN_FIELDS - _GENERAL_OPTIONS - spec.options:
            action.help = argparse.SUPPRESS  # another recipe's data/model option: accepted, not listed
    return parser


def parse_recipe_arguments(
    recipe: Recipe | str, argv: Sequence[str] | None = None
) -> tuple[RecipeArguments, SubspaceTrainingArguments]:
    """Parse a recipe's options: its defaults, then a config file, then command-line flags.

    Args:
        recipe: the recipe (or its name; its defaults are the paper's settings).
        argv: the arguments (default ``sys.argv[1:]``): a single ``.yaml``/``.json`` path, and/or ``--config FILE``
            plus any ``--option value`` of :class:`RecipeArguments` and :class:`SubspaceTrainingArguments`.

    The recipe's own options are parsed and checked first, before torch is imported. Under ``torchrun`` /
    ``accelerate launch`` with N processes, the recipe's (or config's) batch is the paper's global batch and each
    process gets 1/N of it (with a warning, unchanged, when it does not divide); a ``--per_device_train_batch_size``
    on the command line is per process. Option names must be spelled out in full.

    Returns:
        ``(recipe_args, training_args)``; ``recipe_args`` is the run's :class:`~.arguments.ExperimentPlan`.

    Raises:
        ExperimentError: an invalid or abbreviated option, an invalid value, a missing file (one line naming it, no
            usage text).
        ValueError: a config of another recipe, unknown names in a config file.
    """
    spec = recipe if isinstance(recipe, Recipe) else get_recipe(recipe)
    config_path, rest = _split_config(sys.argv[1:] if argv is None else argv)
    defaults = _recipe_defaults(spec, config_path)
    if "-h" in rest or "--help" in rest:
        recipe_parser(spec, defaults).parse_args(["--help"])  # prints the options and exits
    # 1. the experiment's own options: plain Python, checked at once
    plan_parser = _RecipeParser(RecipeArguments, prog=f"hf-subspace run {spec.name}", allow_abbrev=False)
    plan_parser.set_defaults(**{k: v for k, v in defaults.items() if k in _PLAN_FIELDS})
    (recipe_args, rest_) = plan_parser.parse_args_into_dataclasses(args=rest, return_remaining_strings=True)
    recipe_args.recipe = spec.name
    # 2. the training options (torch and transformers)
    from ..training_args import SubspaceTrainingArguments

    if config_path:
        _refuse_unknown_names(defaults, Path(config_path))
    parser = _RecipeParser(SubspaceTrainingArguments, prog=f"hf-subspace run {spec.name}", allow_abbrev=False)
    parser.set_defaults(**_training_defaults(spec, defaults, rest))
    training_args, remaining = parser.parse_args_into_dataclasses(args=rest_, return_remaining_strings=True)
    if remaining:
        known = [o for p in (plan_parser, parser) for a in p._actions for o in a.option_strings if o.startswith("--")]
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
    recipe: Recipe | str, recipe_args: RecipeArguments, training_args: SubspaceTrainingArguments
) -> PreparedRecipe:
    """Build the recipe's model and datasets (files are checked and data loaded here, before any training).

    Raises:
        hf_subspace.experiments.data.DatasetLoadError: a dataset that cannot be loaded (with a hint to pass a local copy).
    """
    spec = recipe if isinstance(recipe, Recipe) else get_recipe(recipe)
    ensure_hub_or_offline()  # no network: offline at once (one quick check) instead of minutes of Hub retries
    return spec.prepare(recipe_args, training_args)


def run_recipe(
    recipe: Recipe | str,
    recipe_args: RecipeArguments,
    training_args: SubspaceTrainingArguments,
    prepared: PreparedRecipe | None = None,
    print_table: bool = True,
) -> ExperimentResult:
    """Run a parsed recipe's experiment (the recipe's builder runs once the settings are checked, unless
    ``prepared`` is given); print the results table on rank 0.

    Raises:
        ExperimentError: a required option of the recipe is missing, or the runner refuses the settings
            (:func:`~.experiment.check_experiment`), before any data is loaded.
    """
    from .experiment import run_experiment

    spec = recipe if isinstance(recipe, Recipe) else get_recipe(recipe)
    recipe_args.recipe = spec.name
    for option in spec.required:
        if not getattr(recipe_args, option):
            help_ = RecipeArguments.__dataclass_fields__[option].metadata.get("help", "")
            raise ExperimentError(f"the {spec.name} recipe needs --{option} ({help_.rstrip('.')}).")
    build = functools.partial(prepare_recipe, spec, recipe_args, training_args)
    result = run_experiment(prepared or build, training_args, recipe_args)
    if result.summary_path is not None and print_table:
        print(result.table())
        print(f"summary: {result.summary_path}" + (f"\nfigure:  {result.figure_path}" if result.figure_path else ""))
        for extra in sorted(Path(result.output_dir).glob("*.png")):  # the recipe's own (the toy's trajectory.png)
            if result.figure_path is None or extra.resolve() != Path(result.figure_path).resolve():
                print(f"figure:  {extra}")
    return result


def console_main(recipe: str, argv: Sequence[str] | None = None) -> int:
    """Run a recipe from a command line and return the exit status: the one error path of every entry point.

    ``hf-subspace run``, ``python recipes/<recipe>.py`` and ``accelerate launch recipes/<recipe>.py`` all end here:
    an unknown recipe, an invalid option, a missing file or an unloadable dataset (``ValueError``, including
    :class:`ExperimentError` and ``DatasetLoadError``, or ``OSError``) prints ONE line ``error: ...`` on stderr (from
    the first process only) and returns 2; ``HF_SUBSPACE_DEBUG=1`` re-raises it with its traceback instead.
    ``--help`` exits 0.
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
    """Look the recipe up, parse and check its arguments, build the model and data, and run it."""
    spec = get_recipe(recipe)
    recipe_args, training_args = parse_recipe_arguments(spec, argv)
    return run_recipe(spec, recipe_args, training_args)
