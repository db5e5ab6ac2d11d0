"""hf-subspace: dominant- and bulk-subspace projected training for Hugging Face transformers.

The public names below are imported on first use (PEP 562), so ``import hf_subspace`` and the ``hf-subspace``
command stay light; importing the package also registers its model types with the ``transformers`` Auto classes
(:mod:`hf_subspace._auto_classes`), so ``AutoModelFor....from_pretrained(saved_branch)`` works after it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._auto_classes import install as _install_auto_classes

if TYPE_CHECKING:
    from .callback import SubspaceCallback
    from .eigensolvers import EigenResult, top_eigenpairs
    from .hessian import HessianOperator
    from .operator import MatrixOperator
    from .spectrum import hessian_eigenpairs
    from .subspace import SubspaceBasis
    from .tracking import BasisTracker
    from .trainer import SubspaceTrainer, SubspaceTrainerMixin
    from .training_args import SubspaceTrainingArguments

__version__ = "0.1.0"

__all__ = [
    "BasisTracker",
    "EigenResult",
    "HessianOperator",
    "MatrixOperator",
    "SubspaceBasis",
    "SubspaceCallback",
    "SubspaceTrainer",
    "SubspaceTrainerMixin",
    "SubspaceTrainingArguments",
    "__version__",
    "hessian_eigenpairs",
    "top_eigenpairs",
]

_HOMES = {
    "EigenResult": "eigensolvers",
    "top_eigenpairs": "eigensolvers",
    "HessianOperator": "hessian",
    "MatrixOperator": "operator",
    "hessian_eigenpairs": "spectrum",
    "SubspaceBasis": "subspace",
    "SubspaceCallback": "callback",
    "SubspaceTrainer": "trainer",
    "SubspaceTrainerMixin": "trainer",
    "SubspaceTrainingArguments": "training_args",
    "BasisTracker": "tracking",
}


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'hf_subspace' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


_install_auto_classes()
