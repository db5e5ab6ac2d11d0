"""Classification accuracy as an ``evaluate`` metric that loads offline.

``evaluate.load("<path to this folder>")`` works without network access, unlike ``evaluate.load("accuracy")`` whose
script lives on the Hugging Face Hub.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

__all__ = ["Accuracy"]

_DESCRIPTION = """
Accuracy: the fraction of predictions that equal the reference label,
(number of correct predictions) / (number of predictions), or the weighted fraction when `sample_weight` is given.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class ids.
    references (`list` of `int`): true class ids.
    normalize (`bool`, defaults to `True`): return the fraction correct; with `False`, the (weighted) count.
    sample_weight (`list` of `float`, optional): a weight per example.

Returns:
    accuracy (`float`): in [0, 1] when `normalize` is `True`.

Example:
    >>> metric = evaluate.load("hf_subspace/metrics/accuracy")
    >>> metric.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0])
    {'accuracy': 0.75}
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    """Fraction of exact matches between predicted and true class ids."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
            reference_urls=[],
        )

    def _compute(
        self,
        predictions: list[int],
        references: list[int],
        normalize: bool = True,
        sample_weight: list[float] | None = None,
    ) -> dict[str, float]:
        pred = np.asarray(predictions, dtype=np.int64)
        ref = np.asarray(references, dtype=np.int64)
        if pred.shape != ref.shape:
            raise ValueError(f"predictions {pred.shape} and references {ref.shape} differ in shape")
        hits = (pred == ref).astype(np.float64)
        weights = np.ones_like(hits) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        total = float(np.sum(hits * weights))
        if normalize:
            denom = float(np.sum(weights))
            total = total / denom if denom > 0 else 0.0
        return {"accuracy": total}
