#!/usr/bin/env python
"""The paper's 2-D ill-conditioned valley: two per-sample losses ½(a x² + b y²) ± c·x·y (k = 1).

SGD keeps χ_1 ≈ 0.95 (noise bounces it across the valley), GD drops to χ_1 ≈ 0, Dom-SGD plateaus at its loss at the
switch, Bulk-SGD converges like SGD. Writes figure.png and trajectory.png (paths on the loss contours).

Launch (any option also works as a flag, e.g. ``--max_steps 500 --optim_args momentum=0.9``)::

    python recipes/toy_quadratic.py recipes/configs/toy_quadratic.yaml

Variants: ``--loss_type cross_entropy``, ``--optim sgd --optim_args momentum=0.9``, ``--optim adamw_torch``,
``--sam_rho 0.05``; branches with ``--modes sgd,dominant,bulk,gd``.
"""

from __future__ import annotations

from collections.abc import Sequence

from hf_subspace.experiments.experiment import ExperimentResult
from hf_subspace.experiments.recipes import console_main
from hf_subspace.experiments.recipes import main as run_named_recipe

RECIPE = "toy_quadratic"


def main(argv: Sequence[str] | None = None) -> ExperimentResult:
    """Parse the options (recipe defaults < config file < flags), validate them before any data loading, build the
    model and dataset, and run the experiment: ``hf_subspace.experiments.recipes.main`` with this recipe's name."""
    return run_named_recipe(RECIPE, argv)


if __name__ == "__main__":
    raise SystemExit(console_main(RECIPE))  # errors: one line on stderr, exit status 2
