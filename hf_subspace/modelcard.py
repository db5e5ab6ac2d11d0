"""Model cards for subspace-projected training runs, rendered with `huggingface_hub.ModelCard`.

The template (``templates/modelcard.md``) is a Hugging Face model card: YAML metadata (``library_name``, ``tags``
with ``hf-subspace``, datasets, metrics, base model) followed by the model, the training procedure with every
subspace setting, the results at the switch and at the end, figures, framework versions and the citation.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

__all__ = [
    "CITATION",
    "TEMPLATE_PATH",
    "CardInfo",
    "as_list",
    "build_card_info",
    "framework_versions",
    "render_model_card",
    "resolve_base_model",
]

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
    base_model: str | None = None  # a Hub id (goes into the card's metadata)
    base_model_path: str | None = None  # a local folder the model was loaded from
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
        return f"{value:,}"
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
        (
            # an unprojected branch keeps a basis only to measure χ_k
            "basis refresh" if mode != "none" else "basis refresh (only to measure χ_k: no update is projected)",
            f"every {summary.get('refresh_steps')} step(s)"
            if summary.get("basis_tol") is None
            else f"certified: ‖P_used − P_exact‖₂ ≤ {summary.get('basis_tol')}, at most {summary.get('refresh_steps')} "
            "steps apart",
        ),
        ("eigensolver", summary.get("solver")),
        ("Hessian dataset size", summary.get("hessian_num_samples")),
        ("parameters covered", summary.get("parameter_filter") or "all trainable parameters"),
        ("SAM radius ρ", summary.get("sam_rho") or "off"),
    ]
    return [(name, _fmt(value)) for name, value in rows]


def resolve_base_model(name_or_path: str | None) -> tuple[str | None, str | None]:
    """``(hub_id, local_path)`` of what a model was loaded from (``config._name_or_path`` or ``finetuned_from``).

    A Hub id is returned as is. An existing local folder gives its absolute path, and a Hub id when one is known:
    the folder is a Hub cache snapshot (``.../models--org--name/snapshots/<hash>``), or its own model card names one
    in its ``base_model`` metadata.
    """
    if not name_or_path:
        return None, None
    if not os.path.isdir(name_or_path):
        return name_or_path, None
    path = os.path.abspath(name_or_path)
    match = re.search(r"models--([^/\\]+?)--([^/\\]+)[/\\]snapshots[/\\]", path + os.sep)
    if match:
        return f"{match.group(1)}/{match.group(2)}", path
    readme = os.path.join(path, "README.md")
    if os.path.isfile(readme):
        try:
            base = ModelCard.load(readme).data.to_dict().get("base_model")
        except Exception:  # an unreadable card only loses the Hub id, never the card being written
            base = None
        if isinstance(base, list):
            base = base[0] if base else None
        if isinstance(base, str) and base and not os.path.isdir(base):
            return base, path
    return None, path


def build_card_info(
    model: Any,
    args: Any,
    state: Any,
    *,
    language: str | None = None,
    license: str | None = None,
    tags: str | list[str] | None = None,
    model_name: str | None = None,
    finetuned_from: str | None = None,
    tasks: str | list[str] | None = None,
    dataset_tags: str | list[str] | None = None,
    dataset: str | list[str] | None = None,
    dataset_args: str | list[str] | None = None,
    figures: list[tuple[str, str]] | None = None,
    description: str = "",
    notes: str = "",
) -> CardInfo:
    """Collect a card's contents from a trained model, its `TrainingArguments` and the `TrainerState`.

    Takes the arguments of `Trainer.create_model_card`. Evaluation metrics are the last logged ``eval_*`` values
    (without runtime and throughput); the base model comes from ``finetuned_from`` or ``config._name_or_path``
    (see :func:`resolve_base_model`).
    """
    config = getattr(model, "config", None)
    evals: dict[str, float] = {}
    for record in state.log_history:
        evals.update({k: v for k, v in record.items() if k.startswith("eval_") and isinstance(v, (int, float))})
    for key in ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second"):
        evals.pop(key, None)
    hyper = {
        "optimizer": str(getattr(args.optim, "value", args.optim))
        + (f" ({args.optim_args})" if args.optim_args else ""),
        "learning rate": args.learning_rate,
        "learning-rate schedule": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        "train batch size (per device)": args.per_device_train_batch_size,
        "gradient accumulation steps": args.gradient_accumulation_steps,
        "processes": args.world_size,
        "optimizer steps": state.global_step,
        "weight decay": args.weight_decay,
        "gradient clipping": args.max_grad_norm or "off",
        "precision": "bf16 mixed" if args.bf16 else "fp16 mixed" if args.fp16 else "fp32",
        "seed": args.seed,
    }
    architectures = getattr(config, "architectures", None) if config is not None else None
    hub_id, local_path = resolve_base_model(
        finetuned_from or (getattr(config, "_name_or_path", None) if config is not None else None)
    )
    return CardInfo(
        model_name=model_name or os.path.basename(os.path.normpath(args.output_dir)),
        architecture=architectures[0] if architectures else type(model).__name__,
        num_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
        base_model=hub_id,
        base_model_path=local_path,
        datasets=as_list(dataset) or as_list(dataset_tags),
        hyperparameters=hyper,
        eval_metrics=evals,
        figures=list(figures or []),
        tags=as_list(tags) + as_list(tasks),
        license=license,
        language=language,
        description=description,
        notes=notes,
    )


def _initialised_from(info: CardInfo) -> str:
    if info.base_model_path:
        return f"local folder `{info.base_model_path}`" + (f" (Hub: {info.base_model})" if info.base_model else "")
    return info.base_model or "scratch (random initialisation)"


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
        initialised_from=_initialised_from(info),
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
