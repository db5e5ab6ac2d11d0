"""The paper runner's settings and validation rules, in one light module (no torch, no transformers).

Everything the ``hf-subspace`` command needs before any heavy import lives here: the branch names and their
meaning, the prefix optimizers, the recipe registry's data (names, descriptions, the paper's defaults), the quick
start's options, and the checks run once per entry point (:func:`parse_modes`, :func:`parse_prefix`,
:func:`check_output_dir`). :mod:`hf_subspace.experiments.recipes` builds the registry from :data:`RECIPE_SPECS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BRANCHES",
    "DEFAULT_MODES",
    "FIGURE_NAME",
    "OUTPUT_NAMES",
    "PREFIXES",
    "PREFIX_DIR",
    "QUICKSTART_MLP",
    "QUICKSTART_TOY",
    "RECIPE_NAMES",
    "RECIPE_SPECS",
    "SUMMARY_NAME",
    "WHOLE_TRAINING_SET",
    "BranchSpec",
    "ExperimentError",
    "RecipeSpec",
    "check_output_dir",
    "check_resumed_options",
    "parse_modes",
    "parse_prefix",
    "recipe_name",
    "resumed_options",
]


class ExperimentError(ValueError):
    """Invalid experiment settings, detected before anything is trained or written."""


# ----------------------------------------------------------------------------------------------- branches and prefix


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
# The paper's names of the methods; no abbreviations (``--modes sgd,dom`` is refused, not guessed).
_ALIASES = {"dom-sgd": "dominant", "bulk-sgd": "bulk", "dom-gd": "dominant-gd"}
DEFAULT_MODES: tuple[str, ...] = ("sgd", "dominant", "bulk")
PREFIX_DIR = "prefix"
SUMMARY_NAME = "summary.json"
FIGURE_NAME = "figure.png"
OUTPUT_NAMES: tuple[str, ...] = (
    PREFIX_DIR,
    SUMMARY_NAME,
    FIGURE_NAME,
    "trajectory.png",
    "sharpness.png",
    "spectrum.png",
    *BRANCHES,
)
"""Everything the experiment writes directly under its ``output_dir`` (what ``overwrite_output_dir`` replaces)."""


def parse_modes(modes: str | Iterable[str]) -> list[str]:
    """Normalise ``"sgd,dominant,bulk"`` (or a list) to known branch names, in order, without duplicates.

    Raises:
        ExperimentError: for an empty list or an unknown mode, naming the valid ones.
    """
    items = modes.split(",") if isinstance(modes, str) else list(modes)
    names: list[str] = []
    for item in items:
        name = str(item).strip().lower().replace("_", "-")
        if not name:
            continue
        name = _ALIASES.get(name, name)
        if name not in BRANCHES:
            raise ExperimentError(f"unknown mode {str(item).strip()!r} in --modes; choose from {', '.join(BRANCHES)}")
        if name not in names:
            names.append(name)
    if not names:
        raise ExperimentError(f"--modes is empty; choose from {', '.join(BRANCHES)}")
    return names


PREFIXES: dict[str, str] = {
    "sgd": "minibatch SGD (the optimizer on minibatches of per_device_train_batch_size)",
    "gd": "full-batch GD (the optimizer on the gradient of the whole training set)",
}
"""The optimizers of the shared prefix (``ExperimentPlan.prefix``, ``--prefix``)."""


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


# ----------------------------------------------------------------------------------------------- recipe registry data

WHOLE_TRAINING_SET = 1_000_000_000
"""The recipes' default ``hessian_num_samples``: larger than any training subset, i.e. the Hessian set is all of it."""


_RESUME_FREE = frozenset({
    "modes", "resume_experiment", "overwrite_output_dir", "basis_audit_steps", "plot", "experiment_name",
})  # fmt: skip
"""Experiment options a resumed run may change: which branches run, what is checked and written; nothing trained."""
_RESUME_TRAINING = (
    "learning_rate", "optim", "optim_args", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon",
    "max_grad_norm", "lr_scheduler_type", "warmup_steps", "warmup_ratio", "per_device_train_batch_size",
    "gradient_accumulation_steps", "max_steps", "seed", "data_seed", "sam_rho", "sam_adaptive",
)  # fmt: skip
"""Training arguments a resumed run must keep (with every ``subspace_*`` one but the graph budget)."""
_RESUME_PATHS = ("train_file", "validation_file", "model_name_or_path", "tokenizer_name")
"""Options compared by the file or folder they name (resolved), when it exists locally."""


def resumed_options(plan: Any, args: Any) -> dict[str, Any]:
    """The options that decide what an experiment trains, as ``--resume_experiment`` compares them: the plan's (a
    recipe's arguments) but the branches to run and the checks and outputs, and the training arguments that change
    the trajectory (optimizer, lr, batch, steps, seed, the ``subspace_*`` settings)."""
    options = {k: v for k, v in dataclasses.asdict(plan).items() if k not in _RESUME_FREE}
    names = [*_RESUME_TRAINING, *(f.name for f in dataclasses.fields(args) if f.name.startswith("subspace_"))]
    options.update({name: getattr(args, name, None) for name in names if name != "subspace_graph_cache_bytes"})
    for name in _RESUME_PATHS:  # the same file named from another folder is the same data
        if isinstance(options.get(name), str) and Path(options[name]).exists():
            options[name] = str(Path(options[name]).resolve())
    return {k: v if isinstance(v, (str, int, float, bool, type(None))) else str(v) for k, v in options.items()}


def check_resumed_options(saved: Mapping[str, Any] | None, current: Mapping[str, Any]) -> None:
    """Refuse to continue an experiment whose finished parts were trained with other options.

    Args:
        saved: :func:`resumed_options` of the run being continued (``None``: recorded before they were kept).
        current: :func:`resumed_options` of this run.

    Raises:
        ExperimentError: naming each changed option, with the fix.
    """
    if saved is None:
        return
    # Only options both versions record: one added by a later version has no recorded value to compare with.
    changed = [f"--{k} {saved[k]!r} -> {current[k]!r}" for k in sorted(saved.keys() & current.keys())
               if saved[k] != current[k]]  # fmt: skip
    if changed:
        raise ExperimentError(
            f"--resume_experiment would continue a run trained with other options ({'; '.join(changed)}). Rerun "
            "with the options it was started with, or give a fresh --output_dir."
        )


@dataclass(frozen=True)
class RecipeSpec:
    """A recipe's data: its name, one-line description, the name of its builder in
    :mod:`hf_subspace.experiments.builders`, and every default it runs with (the paper's settings, on top of
    :data:`_COMMON`): the one source of a recipe's settings. The shipped ``recipes/configs/<name>.yaml`` and the
    ``--help`` defaults are checked against it (``tests/test_recipes.py``); the builders take every value from the
    parsed arguments and fall back on nothing.

    Attributes:
        options: the data and model options of :class:`~hf_subspace.experiments.arguments.RecipeArguments` the
            builder reads; ``--help`` lists only those (the others are accepted, not listed).
        required: options the recipe cannot run without (refused when the arguments are parsed).
    """

    name: str
    builder: str
    description: str
    defaults: Mapping[str, Any]
    options: frozenset[str] = frozenset()
    required: tuple[str, ...] = ()


_COMMON: dict[str, Any] = {
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

_DATA = frozenset({"dataset_name", "train_file", "validation_file", "num_train", "num_validation", "loss_type"})
_IMAGE = _DATA | {"standardize"}
_TEXT = _DATA | {"tokenizer_name", "max_seq_length", "text_column", "label_column"}


def _spec(
    name: str, builder: str, description: str, options: frozenset[str], defaults: Mapping[str, Any], **kw: Any
) -> RecipeSpec:
    merged = {**_COMMON, "output_dir": f"runs/{name}", **defaults}
    if name != "finetune":  # the paper's models use every parameter in every step
        merged.setdefault("ddp_find_unused_parameters", False)
    return RecipeSpec(name, builder, description, merged, options, **kw)


RECIPE_SPECS: dict[str, RecipeSpec] = {
    spec.name: spec
    for spec in (
        _spec("toy_quadratic", "prepare_toy_quadratic", "2-D ill-conditioned valley, ±xy per-sample noise (k = 1)",
              frozenset({"num_train", "model_name_or_path"}),
              {"num_train": 100, "max_steps": 1000, "switch_step": 100, "learning_rate": 1e-3,
               "per_device_train_batch_size": 1, "subspace_k": 1, "subspace_refresh_steps": 10,
               "subspace_alignment_steps": 25, "logging_steps": 50, "modes": "sgd,gd,dominant,bulk"}),
        _spec("mlp_mnist", "prepare_mlp", "MLP 784-200-200-10 (tanh, MSE) on the first 5,000 MNIST images, k = 10",
              _IMAGE | {"hidden_sizes", "activation"},
              {"dataset_name": "mnist", "num_train": 5000, "hidden_sizes": "200,200", "activation": "tanh",
               "loss_type": "mse", "learning_rate": 0.01, "subspace_k": 10, "max_steps": 10000, "switch_step": 2000,
               "subspace_refresh_steps": 10, "subspace_alignment_steps": 200}),
        _spec("cnn_cifar10", "prepare_cnn",
              "CNN (2× conv3-ReLU-pool + linear, MSE) on the first 5,000 CIFAR-10 images", _IMAGE,
              {"dataset_name": "cifar10", "num_train": 5000, "loss_type": "mse", "learning_rate": 0.001,
               "subspace_k": 10, "max_steps": 10000, "switch_step": 2000, "subspace_refresh_steps": 10,
               "subspace_alignment_steps": 200}),
        _spec("transformer_sst2", "prepare_transformer",
              "2-layer post-LN Transformer (MSE) on the first 1,000 SST-2 sentences", _TEXT,
              {"dataset_name": "sst2", "num_train": 1000, "tokenizer_name": "bert-base-uncased", "loss_type": "mse",
               "learning_rate": 0.001, "subspace_k": 2, "max_steps": 10000, "switch_step": 2000,
               "subspace_refresh_steps": 10, "subspace_alignment_steps": 200}),
        _spec("vit_cifar10", "prepare_vit",
              "transformers ViT from ViTConfig (patch 8, hidden 64, 2 layers, cross-entropy) on CIFAR-10",
              _IMAGE | {"hidden_sizes"},
              {"dataset_name": "cifar10", "num_train": 5000, "hidden_sizes": "64,2", "learning_rate": 0.1,
               "subspace_k": 10, "loss_type": "cross_entropy", "max_steps": 3000, "switch_step": 1000,
               "subspace_refresh_steps": 20, "subspace_alignment_steps": 100}),
        _spec("finetune", "prepare_finetune", "fine-tune any Hub checkpoint (sequence or image classification)",
              _TEXT | {"model_name_or_path", "task"},
              {"dataset_name": "sst2", "num_train": 1000, "learning_rate": 1e-3, "per_device_train_batch_size": 16,
               "per_device_eval_batch_size": 64, "subspace_k": 2, "max_steps": 1000, "switch_step": 200,
               "subspace_refresh_steps": 10, "subspace_alignment_steps": 50, "hessian_batch_size": 64},
              required=("model_name_or_path",)),
    )
}  # fmt: skip
"""The recipes' data; :data:`hf_subspace.experiments.recipes.RECIPES` adds their builders."""

RECIPE_NAMES: tuple[str, ...] = tuple(RECIPE_SPECS)
"""The registered recipe names (``--help`` needs no heavy import)."""


def recipe_name(name: str) -> str:
    """Normalise a recipe name (any case, ``-`` for ``_``) to a registered one.

    Raises:
        ExperimentError: for an unknown name, listing the known ones.
    """
    key = str(name).strip().lower().replace("-", "_")
    if key not in RECIPE_SPECS:
        raise ExperimentError(f"unknown recipe {name!r}; choose from {', '.join(RECIPE_SPECS)}")
    return key


# ----------------------------------------------------------------------------------------------- quick start

QUICKSTART_TOY: list[str] = ["--logging_steps", "50"]
"""Options of the toy-quadratic run of the quick start (on top of the recipe's defaults)."""

QUICKSTART_MLP: list[str] = [
    "--dataset_name", "digits", "--num_train", "1500", "--num_validation", "297", "--hidden_sizes", "32,32",
    "--learning_rate", "0.05", "--per_device_train_batch_size", "50", "--subspace_k", "10",
    "--switch_step", "300", "--max_steps", "1500", "--subspace_refresh_steps", "10",
    "--subspace_alignment_steps", "30", "--logging_steps", "100",
]  # fmt: skip
"""Options of the MLP run of the quick start: scikit-learn's 8×8 digits (1,500 train / 297 validation), an
MLP 64-32-32-10 with tanh and MSE, SGD lr 0.05, batch 50, k = 10, switch at step 300 of 1,500."""
