"""Optimizers used alongside subspace-projected training."""

from .sam import SAM

__all__ = ["SAM"]
