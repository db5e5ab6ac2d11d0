"""Model-card content for subspace-projected training runs (Hugging Face model-card format)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard

__all__ = ["CITATION", "add_subspace_section", "subspace_section"]

CITATION = """@inproceedings{song2025does,
  title     = {Does {SGD} really happen in tiny subspaces?},
  author    = {Song, Minhak and Ahn, Kwangjun and Yun, Chulhee},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2025}
}"""

_MODE_NAMES = {"none": "plain training (alignment measured)", "dominant": "Dom-SGD", "bulk": "Bulk-SGD"}
_SECTION_MARK = "## Subspace-projected training (hf-subspace)"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "—" if value is None else str(value)


def subspace_section(summary: dict[str, Any]) -> str:
    """Markdown describing the subspace settings and results of a run.

    Args:
        summary: :meth:`SubspaceTrainer.subspace_summary` output (``mode``, ``k``, ``switch_step``, ``at_switch``,
            ``last``, ...).
    """
    mode = summary.get("mode", "none")
    rows = [
        ("projection", f"{mode} ({_MODE_NAMES.get(mode, mode)})"),
        ("k (dimension of the dominant subspace)", summary.get("k")),
        ("projected quantity", summary.get("target")),
        ("start step", "automatic (χ_k EMA threshold)" if summary.get("auto_start") else summary.get("start_step")),
        ("switch step", summary.get("switch_step")),
        ("basis refresh every", f"{summary.get('refresh_steps')} step(s)"),
        ("eigensolver", summary.get("solver")),
        ("Hessian dataset size", summary.get("hessian_num_samples")),
        ("parameters covered", summary.get("parameter_filter") or "all trainable parameters"),
        ("SAM radius ρ", summary.get("sam_rho") or "off"),
    ]
    lines = [_SECTION_MARK, "", "| setting | value |", "|---|---|"]
    lines += [f"| {name} | {_fmt(value)} |" for name, value in rows]
    results = [("at the switch", summary.get("at_switch") or {}), ("at the end", summary.get("last") or {})]
    if any(r for _, r in results):
        lines += ["", "### Alignment and loss", "", "| when | step | full training loss | χ_k of full-batch gradient |"]
        lines += ["|---|---|---|---|"]
        for when, r in results:
            if r:
                lines.append(
                    f"| {when} | {_fmt(r.get('step'))} | {_fmt(r.get('full_train_loss'))} | "
                    f"{_fmt(r.get('chi_k_full_grad'))} |"
                )
    lines += [
        "",
        "χ_k = ‖P g‖ / ‖g‖ is the fraction of the full-batch gradient g in the span P of the top-k Hessian "
        "eigenvectors. Dom-SGD keeps only that part of each update, Bulk-SGD removes it (Song, Ahn & Yun, 2025).",
        "",
        "### Citation",
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
    ]
    return "\n".join(lines)


def add_subspace_section(readme: str | Path, summary: dict[str, Any]) -> None:
    """Add (or replace) the subspace section of a model card and make sure it is tagged ``hf-subspace``."""
    path = Path(readme)
    card = ModelCard.load(path) if path.exists() else ModelCard("---\n---\n")
    tags = list(card.data.tags or [])
    if "hf-subspace" not in tags:
        tags.append("hf-subspace")
    card.data.tags = tags
    if not card.data.get("library_name"):
        card.data.library_name = "transformers"
    text = card.text
    if _SECTION_MARK in text:
        text = text[: text.index(_SECTION_MARK)].rstrip() + "\n"
    card.text = text.rstrip() + "\n\n" + subspace_section(summary)
    card.save(path)
