#!/usr/bin/env python
"""CNN ([conv 3×3, 32 → ReLU → max-pool] × 2 → linear, MSE) on the first 5,000 CIFAR-10 images (per-channel
standardised), SGD lr 0.001, batch 50, k = 10.

Offline: --train_file path/to/cifar10_train.npz (arrays x [N,32,32,3] uint8, y) [--validation_file ...].

Launch (any option also works as a flag, e.g. ``--max_steps 500 --optim_args momentum=0.9``)::

    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/cnn_cifar10.py recipes/configs/cnn_cifar10.yaml

Variants: ``--loss_type cross_entropy``, ``--optim sgd --optim_args momentum=0.9``, ``--optim adamw_torch``,
``--sam_rho 0.05``; branches with ``--modes sgd,dominant,bulk,gd``.
"""

from __future__ import annotations

from collections.abc import Sequence

from hf_subspace.experiments.experiment import ExperimentResult
from hf_subspace.experiments.recipes import console_main
from hf_subspace.experiments.recipes import main as run_named_recipe

RECIPE = "cnn_cifar10"


def main(argv: Sequence[str] | None = None) -> ExperimentResult:
    """Parse the options (recipe defaults < config file < flags), validate them before any data loading, build the
    model and dataset, and run the experiment: ``hf_subspace.experiments.recipes.main`` with this recipe's name."""
    return run_named_recipe(RECIPE, argv)


if __name__ == "__main__":
    raise SystemExit(console_main(RECIPE))  # errors: one line on stderr, exit status 2
