"""Accuracy for ``Trainer.compute_metrics`` and an ``evaluate`` accuracy metric that also loads offline."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ACCURACY_METRIC_PATH", "accuracy_metrics", "compute_accuracy", "hub_offline", "load_accuracy_metric"]

logger = logging.getLogger(__name__)

ACCURACY_METRIC_PATH: Path = Path(__file__).resolve().parent / "metric_scripts" / "accuracy"
"""Folder of the shipped ``evaluate`` accuracy script (``evaluate.load(str(ACCURACY_METRIC_PATH))``)."""

_TRUE = {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` or ``HF_EVALUATE_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set to a true value."""
    names = ("HF_HUB_OFFLINE", "HF_EVALUATE_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in names)


def load_accuracy_metric(prefer_hub: bool = True) -> Any:
    """An ``evaluate`` accuracy metric.

    Tries the Hub's ``evaluate.load("accuracy")`` when ``prefer_hub``, not offline and the Hub answers one quick
    connection (:func:`~hf_subspace.experiments._hub.ensure_hub_or_offline`), and falls back to the script
    shipped with this package (:data:`ACCURACY_METRIC_PATH`), which needs no network.

    Args:
        prefer_hub: try the Hub metric first (skipped anyway when offline).

    Returns:
        An ``evaluate.EvaluationModule`` whose ``compute(predictions=..., references=...)`` returns ``{"accuracy": x}``.
    """
    import evaluate

    from ._hub import ensure_hub_or_offline

    if prefer_hub and not hub_offline() and ensure_hub_or_offline():
        try:
            return evaluate.load("accuracy")
        except Exception as err:
            logger.info("evaluate.load('accuracy') failed (%s); using the shipped accuracy script", err)
    return evaluate.load(str(ACCURACY_METRIC_PATH))


def _as_array(x: Any) -> np.ndarray:
    if isinstance(x, tuple) and x and (isinstance(x[0], np.ndarray) or hasattr(x[0], "detach")):
        x = x[0]  # model outputs beyond the logits (hidden states, ...)
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def compute_accuracy(eval_pred: Any) -> dict[str, float]:
    """Accuracy of argmax predictions; usable as ``Trainer(compute_metrics=compute_accuracy)``.

    Args:
        eval_pred: a ``transformers.EvalPrediction`` or a ``(predictions, label_ids)`` pair. Predictions are logits
            ``[N, C]`` (or a tuple whose first item is the logits), or already class ids ``[N]``. Labels are class
            ids ``[N]`` or one-hot / soft float targets ``[N, C]`` (their argmax is used).

    Returns:
        ``{"accuracy": fraction correct}`` (0.0 for an empty set).
    """
    if hasattr(eval_pred, "predictions"):
        predictions, labels = eval_pred.predictions, eval_pred.label_ids
    else:
        predictions, labels = eval_pred
    logits, targets = _as_array(predictions), _as_array(labels)
    pred = logits.argmax(axis=-1) if logits.ndim > 1 else logits
    true = targets.argmax(axis=-1) if targets.ndim > 1 else targets
    pred, true = pred.reshape(-1).astype(np.int64), true.reshape(-1).astype(np.int64)
    if pred.shape != true.shape:
        raise ValueError(f"{pred.shape[0]} predictions but {true.shape[0]} labels")
    return {"accuracy": float((pred == true).mean()) if pred.size else 0.0}


def accuracy_metrics() -> Callable[[Any], dict[str, float]]:
    """``compute_metrics`` through ``evaluate`` (the Hub's accuracy, or the shipped script offline); plain numpy
    accuracy (:func:`compute_accuracy`, the same numbers) when ``evaluate`` is unusable."""
    try:
        metric = load_accuracy_metric()
    except Exception as err:  # evaluate unusable: plain numpy accuracy, same numbers
        logger.warning("could not load the evaluate accuracy metric (%s); computing accuracy directly", err)
        return compute_accuracy

    def compute(eval_pred: Any) -> dict[str, float]:
        predictions, labels = eval_pred.predictions, eval_pred.label_ids
        logits = predictions[0] if isinstance(predictions, tuple) else predictions
        pred = np.asarray(logits).argmax(axis=-1) if np.ndim(logits) > 1 else np.asarray(logits)
        true = np.asarray(labels)
        true = true.argmax(axis=-1) if true.ndim > 1 else true
        return metric.compute(predictions=pred.reshape(-1), references=true.reshape(-1))

    return compute
