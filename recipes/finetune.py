#!/usr/bin/env python
"""Fine-tune any Hub checkpoint with the SubspaceTrainer: --model_name_or_path for sequence classification (SST-2 by
default) or image classification (--task image --dataset_name cifar10).

The model's own loss (cross entropy) by default; --loss_type mse for the paper's loss.

Launch (any option also works as a flag, e.g. ``--max_steps 500 --optim_args momentum=0.9``)::

    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/finetune.py recipes/configs/finetune.yaml \
    --model_name_or_path google-bert/bert-base-uncased

Variants: ``--loss_type cross_entropy``, ``--optim sgd --optim_args momentum=0.9``, ``--optim adamw_torch``,
``--sam_rho 0.05``; branches with ``--modes sgd,dominant,bulk,gd``.
"""

from __future__ import annotations

from collections.abc import Sequence

from hf_subspace.experiments.experiment import ExperimentResult
from hf_subspace.experiments.recipes import console_main
from hf_subspace.experiments.recipes import main as run_named_recipe

RECIPE = "finetune"


def main(argv: Sequence[str] | None = None) -> ExperimentResult:
    """Parse the options (recipe defaults < config file < flags), validate them before any data loading, build the
    model and dataset, and run the experiment: ``hf_subspace.experiments.recipes.main`` with this recipe's name."""
    return run_named_recipe(RECIPE, argv)


if __name__ == "__main__":
    raise SystemExit(console_main(RECIPE))  # errors: one line on stderr, exit status 2
