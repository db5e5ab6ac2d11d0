#!/usr/bin/env python
"""MLP 784-200-200-10 (tanh, MSE) on the first 5,000 MNIST training images, SGD lr 0.01, batch 50, k = 10.

Offline: --train_file ../shared/data/mnist/train.npz --validation_file ../shared/data/mnist/t10k-images-idx3-ubyte.gz

Launch (any option also works as a flag, e.g. ``--max_steps 500 --optim_args momentum=0.9``)::

    accelerate launch --config_file recipes/accelerate/single_cpu.yaml recipes/mlp_mnist.py recipes/configs/mlp_mnist.yaml

Variants: ``--loss_type cross_entropy``, ``--optim sgd --optim_args momentum=0.9``, ``--optim adamw_torch``,
``--sam_rho 0.05``; branches with ``--modes sgd,dominant,bulk,gd``. Wall times of the reference runs:
``docs/performance.md`` (Reference runs).
"""

from __future__ import annotations

from collections.abc import Sequence

from hf_subspace.experiments.experiment import ExperimentResult
from hf_subspace.experiments.recipes import console_main
from hf_subspace.experiments.recipes import main as run_named_recipe

RECIPE = "mlp_mnist"


def main(argv: Sequence[str] | None = None) -> ExperimentResult:
    """Parse the options (recipe defaults < config file < flags), validate them before any data loading, build the
    model and dataset, and run the experiment: ``hf_subspace.experiments.recipes.main`` with this recipe's name."""
    return run_named_recipe(RECIPE, argv)


if __name__ == "__main__":
    raise SystemExit(console_main(RECIPE))  # errors: one line on stderr, exit status 2
