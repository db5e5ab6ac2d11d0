"""Register the package's model types with the ``transformers`` Auto classes, without importing torch up front.

``import hf_subspace`` must make ``AutoModelForImageClassification.from_pretrained(saved_branch)`` work (the model
types ``hf_subspace_mlp``, ``hf_subspace_cnn``, ``hf_subspace_sst2_transformer``, ``hf_subspace_toy_quadratic`` are
unknown to transformers otherwise), yet ``hf-subspace --help`` must not pay for importing torch and transformers.
So :func:`install` registers at once when transformers' Auto classes are already loaded, and otherwise arranges for
the registration to run right after ``transformers.models.auto.modeling_auto`` (the module of every
``AutoModelFor...`` class) has been imported: a one-shot import hook that wraps that module's loader and removes
itself from ``sys.meta_path`` when it fires. ``AutoConfig`` alone (without any Auto model class) does not trigger
it; ``import hf_subspace.models`` registers everything directly.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

__all__ = ["TRIGGER", "install", "register_auto_classes"]

logger = logging.getLogger(__name__)

TRIGGER = "transformers.models.auto.modeling_auto"
"""The module after whose import the registration runs: the Auto model classes'. (``AutoConfig``'s own module is
too early: it is imported half-way through initialising transformers, where importing the models fails.)"""

_state = {"registered": False}


def register_auto_classes() -> None:
    """Register every model type of :mod:`hf_subspace.models` (and the toy) with the Auto classes (idempotent)."""
    if _state["registered"]:
        return
    from .models import register_auto_classes as register_models
    from .models import toy  # noqa: F401  (registers AutoConfig / AutoModel for the toy on import)

    register_models()
    _state["registered"] = True


def _register_after_import() -> None:
    try:
        register_auto_classes()
    except ImportError as err:  # transformers half-initialised by an unusual import order: retried on next use
        logger.debug("hf_subspace: deferring the Auto-class registration (%s)", err)


class _Loader(importlib.abc.Loader):
    """Runs the wrapped loader, then the registration."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _register_after_import()


class _Finder(importlib.abc.MetaPathFinder):
    """Finds :data:`TRIGGER` through the other finders and wraps its loader (once)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != TRIGGER:
            return None
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Finder)]
        for finder in list(sys.meta_path):  # the finders that would have found it (this one is gone)
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


def install() -> None:
    """Register now if transformers' Auto classes are loaded, else once they are (see the module docstring)."""
    if TRIGGER in sys.modules:
        _register_after_import()
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
