"""Model cards for subspace-projected training runs, rendered with `huggingface_hub.ModelCard`.

The template (``templates/modelcard.md``) is a Hugging Face model card: YAML metadata (``library_name``, ``tags``
with ``hf-subspace``, datasets, metrics, base model) followed by the model, the training procedure with every
subspace setting, the results at the switch and at the end, figures, framework versions and the citation.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

__all__ = ["CITATION", "TEMPLATE_PATH", "CardInfo", "framework_versions", "render_model_card"]

TEMPLATE_PATH = Path(__file__).resolve().parent / "templates" / "modelcard.md"

CITATION = """@inproceedings{song2025does,
  title     = {Does {SGD} really happen in tiny subspaces?},
  author    = {Song, Minhak and Ahn, Kwangjun and Yun, Chulhee},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2025}
}"""

_MODES = {
    "none": (
        "plain training",
        "Updates were not projected; the alignment of the gradient with the dominant Hessian subspace was measured.",
    ),
    "dominant": (
        "Dom-SGD",
        "After the switch step every update was projected onto the dominant subspace (the span of the top-k "
        "Hessian eigenvectors), the setting in which Song, Ahn & Yun (2025) found that training stops making progress.",
    ),
    "bulk": (
        "Bulk-SGD",
        "After the switch step the dominant-subspace component (top-k Hessian eigenvectors) was removed from every "
        "update, the setting in which Song, Ahn & Yun (2025) found that training proceeds like plain SGD.",
    ),
}


@dataclass
class CardInfo:
    """Everything a card shows besides the subspace summary."""

    model_name: str
    architecture: str = "unknown"
    num_parameters: int | None = None
    base_model: str | None = None
    datasets: list[str] = field(default_factory=list)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (relative path, alt text)
    tags: list[str] = field(default_factory=list)
    license: str | None = None
    language: str | list[str] | None = None
    description: str = ""
    notes: str = ""


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    return "—" if value is None or value == "" else str(value)


def framework_versions() -> list[tuple[str, str]]:
    """Installed versions of the packages a run depends on."""
    out = []
    for name, dist in (
        ("hf-subspace", "hf-subspace"),
        ("Transformers", "transformers"),
        ("PyTorch", "torch"),
        ("Accelerate", "accelerate"),
        ("Datasets", "datasets"),
    ):
        try:
            out.append((name, importlib.metadata.version(dist)))
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _subspace_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    mode = summary.get("mode", "none")
    start = "automatic (χ_k EMA ≥ threshold)" if summary.get("auto_start") else summary.get("start_step")
    rows = [
        ("projection", f"{mode} ({_MODES.get(mode, (mode, ''))[0]})"),
        ("k (dimension of the dominant subspace)", summary.get("k")),
        ("projected quantity", summary.get("target")),
        ("start step", start),
        ("switch step", summary.get("switch_step")),
        ("basis refresh every", f"{summary.get('refresh_steps')} step(s)"),
        ("eigensolver", summary.get("solver")),
        ("Hessian dataset size", summary.get("hessian_num_samples")),
        ("parameters covered", summary.get("parameter_filter") or "all trainable parameters"),
        ("SAM radius ρ", summary.get("sam_rho") or "off"),
    ]
    return [(name, _fmt(value)) for name, value in rows]


def render_model_card(summary: dict[str, Any], info: CardInfo) -> ModelCard:
    """Render the hf-subspace model card.

    Args:
        summary: :meth:`SubspaceTrainer.subspace_summary` output (mode, k, switch step, results at the switch and at
            the end, ...).
        info: the model, data, hyperparameters, evaluation metrics and figures.

    Returns:
        A `huggingface_hub.ModelCard` (``card.save(path)`` writes it; ``card.validate()`` checks it for the Hub).
    """
    mode = summary.get("mode", "none")
    mode_title, explanation = _MODES.get(mode, (mode, ""))
    tags = list(dict.fromkeys(["hf-subspace", *info.tags, f"subspace-{mode}"]))
    card_data = ModelCardData(
        library_name="transformers",
        tags=tags,
        datasets=info.datasets or None,
        metrics=sorted({name.removeprefix("eval_") for name in info.eval_metrics} & {"accuracy", "loss"}) or None,
        base_model=info.base_model,
        license=info.license,
        language=info.language,
    )
    result_rows = []
    for when, record in (("at the switch", summary.get("at_switch")), ("at the end", summary.get("last"))):
        if record:
            result_rows.append(
                {
                    "when": when,
                    "step": _fmt(record.get("step")),
                    "loss": _fmt(record.get("full_train_loss")),
                    "chi": _fmt(record.get("chi_k_full_grad")),
                }
            )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_name=info.model_name,
        description=info.description,
        mode_title=mode_title,
        mode_explanation=explanation,
        architecture=info.architecture,
        num_parameters=_fmt(info.num_parameters),
        base_model=info.base_model,
        dataset_names=", ".join(info.datasets),
        subspace_rows=_subspace_rows(summary),
        hyperparameters=[(name, _fmt(value)) for name, value in info.hyperparameters.items()],
        result_rows=result_rows,
        eval_rows=[(name, _fmt(value)) for name, value in info.eval_metrics.items()],
        figures=[{"path": path, "alt": alt} for path, alt in info.figures],
        notes=info.notes,
        versions=framework_versions(),
        citation=CITATION,
    )


def as_list(value: str | Sequence[str] | None) -> list[str]:
    """``None`` → ``[]``, a string → ``[string]``, a sequence → list."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)
