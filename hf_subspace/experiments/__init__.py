"""The paper runner: Song, Ahn & Yun (ICLR 2025)'s protocol on top of the hf_subspace library.

It uses only the library's public API and is never imported by it. Modules, from the top:

- :mod:`~hf_subspace.experiments.settings`: branch and prefix names, the recipe registry's data, the quick start's
  options, and the validation rules every entry point runs once (plain Python, no torch);
- :mod:`~hf_subspace.experiments.recipes` (registry, argument parsing, :func:`~hf_subspace.experiments.recipes.main`),
  :mod:`~hf_subspace.experiments.arguments` (``ExperimentPlan``, ``RecipeArguments``, ``PreparedRecipe``),
  :mod:`~hf_subspace.experiments.builders` (model and data of each recipe);
- :mod:`~hf_subspace.experiments.experiment` (:func:`~hf_subspace.experiments.experiment.run_experiment`: shared
  prefix, branches, ``summary.json``) and :mod:`~hf_subspace.experiments.branches` (its callbacks, curves, table);
- :mod:`~hf_subspace.experiments.data` / ``_data_io`` (datasets from the Hub or local files),
  :mod:`~hf_subspace.experiments.evaluation` (offline-safe accuracy), :mod:`~hf_subspace.experiments.plotting`;
- :mod:`~hf_subspace.experiments.claims` (the paper's claims from a summary), :mod:`~hf_subspace.experiments.cards`
  (reference model cards), :mod:`~hf_subspace.experiments.quickstart`, :mod:`~hf_subspace.experiments.spectrum`
  (the ``hf-subspace`` subcommands' bodies).

Importing this package imports nothing else, so ``hf-subspace --help`` stays light.
"""

__all__: list[str] = []
