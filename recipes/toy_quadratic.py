#!/usr/bin/env python
"""The paper's 2-D ill-conditioned valley: two per-sample losses ½(a x² + b y²) ± c·x·y (k = 1).

SGD keeps χ_1 ≈ 0.95 (noise bounces it across the valley), GD drops to χ_1 ≈ 0, Dom-SGD plateaus at its loss at the
switch, Bulk-SGD converges like SGD. Writes figure.png and trajectory.png (paths on the loss contours). Seconds on CPU.

Launch (any option also works as a flag, e.g. ``--max_steps 500 --optim_args momentum=0.9``)::

    python recipes/toy_quadratic.py recipes/configs/toy_quadratic.yaml

Variants: ``--loss_type cross_entropy``, ``--optim sgd --optim_args momentum=0.9``, ``--optim adamw_torch``,
``--sam_rho 0.05``; branches with ``--modes sgd,dominant,bulk,gd``.
"""

from __future__ import annotations

from collections.abc import Sequence

from hf_subspace.experiment import ExperimentResult
from hf_subspace.recipes import parse_recipe_arguments, prepare_recipe, run_recipe, validate_recipe

RECIPE = "toy_quadratic"


def main(argv: Sequence[str] | None = None) -> ExperimentResult:
    """Parse the options, build the model and dataset, and run the experiment."""
    # HfArgumentParser((RecipeArguments, SubspaceTrainingArguments)): recipe defaults < config file < flags
    recipe_args, training_args = parse_recipe_arguments(RECIPE, argv)
    validate_recipe(RECIPE, recipe_args, training_args)  # before any data loading or training
    prepared = prepare_recipe(RECIPE, recipe_args, training_args)  # the model and the datasets
    return run_recipe(RECIPE, recipe_args, training_args, prepared)  # hf_subspace.experiment.run_experiment


if __name__ == "__main__":
    main()
