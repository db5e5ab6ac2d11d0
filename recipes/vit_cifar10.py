#!/usr/bin/env python
"""A Hugging Face vision model: ``ViTForImageClassification`` built from a ``ViTConfig`` (image 32, patch 8, hidden 64,
2 layers, 4 heads, MLP 128, eager attention; 81k parameters) through ``AutoModelForImageClassification.from_config``,
on CIFAR-10 images normalised by a ``ViTImageProcessor(do_resize=False, image_mean, image_std)`` with the training
subset's per-channel statistics; cross-entropy (the model's own loss; ``--loss_type mse`` for the paper's), SGD lr 0.1,
batch 50, k = 10. The processor is saved with every branch model.

Offline: --train_file ../shared/data/cifar10/train.npz --validation_file ../shared/data/cifar10/test.npz. A refresh
over the config's 5,000-image Hessian set is slow on a CPU: use a GPU for the config's 3,000 steps (wall times of the
reference run: ``docs/performance.md``, Reference runs).

Launch (any option also works as a flag, e.g. ``--max_steps 500 --optim_args momentum=0.9``)::

    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/vit_cifar10.py recipes/configs/vit_cifar10.yaml

Variants: ``--loss_type mse``, ``--optim sgd --optim_args momentum=0.9``, ``--optim adamw_torch``, ``--sam_rho 0.05``;
branches with ``--modes sgd,dominant,bulk,gd``; ``--hidden_sizes 128,4`` for hidden size 128 and 4 layers.
"""

from __future__ import annotations

from collections.abc import Sequence

from hf_subspace.experiments.experiment import ExperimentResult
from hf_subspace.experiments.recipes import console_main
from hf_subspace.experiments.recipes import main as run_named_recipe

RECIPE = "vit_cifar10"


def main(argv: Sequence[str] | None = None) -> ExperimentResult:
    """Parse the options (recipe defaults < config file < flags), validate them before any data loading, build the
    model and dataset, and run the experiment: ``hf_subspace.experiments.recipes.main`` with this recipe's name."""
    return run_named_recipe(RECIPE, argv)


if __name__ == "__main__":
    raise SystemExit(console_main(RECIPE))  # errors: one line on stderr, exit status 2
