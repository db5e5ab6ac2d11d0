"""hf-subspace: dominant- and bulk-subspace projected training for Hugging Face transformers."""

from __future__ import annotations

from .eigensolvers import EigenResult, top_eigenpairs
from .hessian import HessianOperator
from .operator import MatrixOperator
from .spectrum import hessian_eigenpairs
from .subspace import SubspaceBasis
from .trainer import SubspaceTrainer
from .training_args import SubspaceTrainingArguments

__version__ = "0.1.0"

__all__ = [
    "EigenResult",
    "HessianOperator",
    "MatrixOperator",
    "SubspaceBasis",
    "SubspaceTrainer",
    "SubspaceTrainingArguments",
    "__version__",
    "hessian_eigenpairs",
    "top_eigenpairs",
]
