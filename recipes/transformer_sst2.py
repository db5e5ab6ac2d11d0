#!/usr/bin/env python
"""Transformer encoder from scratch (embedding 64, sinusoidal positions, 2 post-LN layers, 8 heads, FFN 2048, mean
pooling, MSE) on the first 1,000 SST-2 sentences, SGD lr 0.001, batch 50, k = 2.

Offline: --train_file ../shared/data/sst2/train.tsv --validation_file ../shared/data/sst2/dev.tsv (the tokenizer is
then trained offline on the training sentences when the Hub tokenizer is unreachable).

Launch (any option also works as a flag, e.g. ``--max_steps 500 --optim_args momentum=0.9``)::

    accelerate launch --config_file recipes/accelerate/single_cpu.yaml recipes/transformer_sst2.py recipes/configs/transformer_sst2.yaml

Variants: ``--loss_type cross_entropy``, ``--optim sgd --optim_args momentum=0.9``, ``--optim adamw_torch``,
``--sam_rho 0.05``; branches with ``--modes sgd,dominant,bulk,gd``.
"""

from __future__ import annotations

from collections.abc import Sequence

from hf_subspace.experiments.experiment import ExperimentResult
from hf_subspace.experiments.recipes import console_main
from hf_subspace.experiments.recipes import main as run_named_recipe

RECIPE = "transformer_sst2"


def main(argv: Sequence[str] | None = None) -> ExperimentResult:
    """Parse the options (recipe defaults < config file < flags), validate them before any data loading, build the
    model and dataset, and run the experiment: ``hf_subspace.experiments.recipes.main`` with this recipe's name."""
    return run_named_recipe(RECIPE, argv)


if __name__ == "__main__":
    raise SystemExit(console_main(RECIPE))  # errors: one line on stderr, exit status 2
