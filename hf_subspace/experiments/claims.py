"""The paper's four qualitative claims, answered from an experiment's ``summary.json`` (thresholds in one place).

Used by the quick start (its ✓/✗ lines), by the reference cards and by the tests; the thresholds below are the only
copy of each rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ALIGNMENT_LOSS_RATIO",
    "AMPLIFICATION_RATIO",
    "BULK_TRACK_RATIO",
    "DOM_STALL_RATIO",
    "EOS_RATIO",
    "PAPER_ANSWERS",
    "SPECTRUM_GAP_RATIO",
    "TABLE1_STEPS",
    "Claim",
    "effective_lr_table",
    "evaluate_claims",
    "format_value",
    "optimizer_label",
    "paper_answer",
    "ratio",
]

DOM_STALL_RATIO = 0.9
"""Dom-SGD "stalls" when its final loss is at least this fraction of its loss at the switch."""
BULK_TRACK_RATIO = 1.5
"""Bulk-SGD "tracks SGD" when its final loss is at most this multiple of SGD's."""
ALIGNMENT_LOSS_RATIO = 0.5
"""SGD→GD "loses the alignment" when GD's mean χ_k after the switch is below this fraction of SGD's; GD→SGD
"restores" it when SGD's mean χ_k after a GD prefix is above χ_k at the switch and at least 1/this times it."""
PAPER_ANSWERS: dict[str, str] = {
    "Dom-SGD stalls": "yes",
    "Bulk-SGD tracks SGD": "yes",
    "SGD→GD loses the alignment": "yes",
    "GD→SGD restores the alignment": "yes",
}
"""The paper's answer to each claim (Song, Ahn & Yun 2025)."""


@dataclass
class Claim:
    """One of the paper's qualitative claims, answered for one run from its summary."""

    claim: str
    run: str
    answer: str  # "yes", "no", "inconclusive" or "n/a"
    evidence: str


def ratio(a: Any, b: Any) -> float | None:
    return a / b if isinstance(a, int | float) and isinstance(b, int | float) and b > 0 else None


def format_value(value: Any, spec: str = ".4g") -> str:
    return "—" if value is None else format(value, spec) if isinstance(value, int | float) else str(value)


def evaluate_claims(name: str, summary: Mapping[str, Any], gd_prefix_run: str | None = None) -> list[Claim]:
    """Answer the paper's four claims from a ``summary.json`` (thresholds: module constants).

    The first three are about branches after an SGD prefix, the last ("GD→SGD restores the alignment") needs a GD
    prefix (``summary["prefix_optimizer"] == "gd"``, from ``--prefix gd``); a summary answers one or the other.

    Args:
        name: the run's name (copied into each claim).
        summary: the experiment's ``summary.json``.
        gd_prefix_run: the run with a GD prefix that answers GD→SGD for this one, named in the evidence.

    Returns:
        One :class:`Claim` per claim; ``n/a`` when the branches or the prefix needed were not run.
    """
    claims = _base_claims(name, summary, gd_prefix_run)
    label = optimizer_label(summary)
    if label != "SGD":  # momentum, Adam, SAM: the same claims about Dom-/Bulk- variants of that optimizer
        for c in claims:
            if c.claim in ("Dom-SGD stalls", "Bulk-SGD tracks SGD"):
                c.claim = c.claim.replace("SGD", label)
                c.evidence = c.evidence.replace("bulk/SGD", f"bulk/{label}").replace("SGD itself", f"{label} itself")
    return claims + _extra_claims(name, summary)


def _unprojected(runs: Mapping[str, Mapping[str, Any]], full_batch: bool) -> Mapping[str, Any] | None:
    """The unprojected branch (``subspace_mode == "none"``) with minibatch or full-batch steps, whatever its name."""
    return next(
        (r for r in runs.values() if r.get("subspace_mode") == "none" and bool(r.get("full_batch")) == full_batch),
        None,
    )


def _base_claims(name: str, summary: Mapping[str, Any], gd_prefix_run: str | None) -> list[Claim]:
    runs: Mapping[str, Mapping[str, Any]] = summary.get("runs") or {}
    sgd, dom, bulk, gd = (runs.get(m) for m in ("sgd", "dominant", "bulk", "gd"))
    # The unprojected branches may be named after their optimizer (``momentum``, ``adamw``, ``sam-sgd``, ``adamw-gd``).
    sgd = sgd or _unprojected(runs, full_batch=False)
    gd = gd or _unprojected(runs, full_batch=True)
    out = []
    prefix = str(summary.get("prefix_optimizer", "sgd"))
    if prefix == "gd":
        # The first three claims are about branches leaving an SGD prefix; after a GD prefix they do not apply.
        why = "the branches follow a GD prefix; the claim is about branches after an SGD prefix"
        for text in ("Dom-SGD stalls", "Bulk-SGD tracks SGD", "SGD→GD loses the alignment"):
            out.append(Claim(text, name, "n/a", why))
        out.append(_gd_to_sgd_claim(name, sgd))
        return out
    # Stalling and tracking only mean something if SGD itself made progress after the switch.
    sgd_r = ratio(sgd.get("final_loss"), sgd.get("loss_at_switch")) if sgd else None
    flat = sgd_r is not None and sgd_r >= DOM_STALL_RATIO
    why_flat = f"; inconclusive: SGD itself only reached {format_value(sgd_r, '.3f')} × its loss at the switch"
    text = "Dom-SGD stalls"
    r = ratio(dom.get("final_loss"), dom.get("loss_at_switch")) if dom else None
    if r is None:
        out.append(Claim(text, name, "n/a", "no dominant branch"))
    else:
        ans = "inconclusive" if flat else "yes" if r >= DOM_STALL_RATIO else "no"
        ev = f"final/switch loss = {r:.3f} (stalls if ≥ {DOM_STALL_RATIO})" + (why_flat if flat else "")
        out.append(Claim(text, name, ans, ev))
    text = "Bulk-SGD tracks SGD"
    r = ratio(bulk.get("final_loss"), sgd.get("final_loss")) if bulk and sgd else None
    if r is None:
        out.append(Claim(text, name, "n/a", "no bulk or sgd branch"))
    else:
        ans = "inconclusive" if flat else "yes" if r <= BULK_TRACK_RATIO else "no"
        ev = f"bulk/SGD final loss = {r:.3f} (tracks if ≤ {BULK_TRACK_RATIO})" + (why_flat if flat else "")
        out.append(Claim(text, name, ans, ev))
    text = "SGD→GD loses the alignment"
    r = ratio(gd.get("mean_chi_k"), sgd.get("mean_chi_k")) if gd and sgd else None
    if r is None:
        out.append(Claim(text, name, "n/a", "no gd branch"))
    else:
        ans = "yes" if r < ALIGNMENT_LOSS_RATIO else "no"
        ev = f"mean χ_k GD {gd['mean_chi_k']:.3f} vs SGD {sgd['mean_chi_k']:.3f} (loses if ratio < {ALIGNMENT_LOSS_RATIO})"
        out.append(Claim(text, name, ans, ev))
    out.append(
        Claim(
            "GD→SGD restores the alignment",
            name,
            "n/a",
            "needs a GD prefix: run with --prefix gd --modes sgd,gd"
            + (f" (reference run {gd_prefix_run})" if gd_prefix_run else ""),
        )
    )
    return out


def _gd_to_sgd_claim(name: str, sgd: Mapping[str, Any] | None) -> Claim:
    """The claim "GD→SGD restores the alignment" from the sgd branch of a GD-prefix summary."""
    text = "GD→SGD restores the alignment"
    if not sgd:
        return Claim(text, name, "n/a", "no sgd branch after the GD prefix (add sgd to --modes)")
    before, after = sgd.get("chi_k_at_switch"), sgd.get("mean_chi_k")
    if before is None:
        return Claim(
            text,
            name,
            "n/a",
            "χ_k not measured at the switch (choose --subspace_alignment_steps dividing --switch_step)",
        )
    if after is None:
        return Claim(text, name, "n/a", "χ_k not measured after the switch")
    ans = "yes" if after > before and (before <= 0 or after / before >= 1 / ALIGNMENT_LOSS_RATIO) else "no"
    ev = (
        f"χ_k at the switch (after GD) {before:.3f} → mean after the switch (SGD) {after:.3f} (restores if ≥ "
        f"{1 / ALIGNMENT_LOSS_RATIO:g} × and higher)"
    )
    return Claim(text, name, ans, ev)


# ----------------------------------------------------------------------------------------------- the paper's other claims

EOS_RATIO = 0.9
"""GD "reaches the edge of stability" when the sharpness λ₁ reaches at least this fraction of 2/η during the prefix."""
SPECTRUM_GAP_RATIO = 1.5
"""The top-k eigenvalues "separate from the rest" when the mean of λ_k / λ_{k+1} over the measurements is at least
this (and its minimum above 1)."""
AMPLIFICATION_RATIO = 2.0
"""An optimizer "amplifies the bulk" when its mean bulk effective learning rate is at least this multiple of its mean
dominant one over the first :data:`TABLE1_STEPS` steps."""
TABLE1_STEPS = 1000
"""The paper's Table 1 averages the effective learning rates over the first 1,000 steps."""
_EXTRA_ANSWERS = {
    "GD reaches the edge of stability (λ₁ ≈ 2/η)": "yes",
    "Dom-GD fails at the edge of stability": "yes",
    "Bulk-GD is as effective as GD at the edge of stability": "yes",
    "the top-k eigenvalues separate from the rest (spectrum gap)": "yes",
}


def paper_answer(claim: str) -> str:
    """The paper's answer to a claim of :func:`evaluate_claims` (``"yes"`` for the Dom-/Bulk- claims of any
    optimizer and for the amplification claims)."""
    if claim in PAPER_ANSWERS:
        return PAPER_ANSWERS[claim]
    return _EXTRA_ANSWERS.get(claim, "yes")


def optimizer_label(summary: Mapping[str, Any]) -> str:
    """``SGD``, ``momentum``, ``Adam`` or ``SAM`` (SAM wrapping momentum/Adam: ``SAM-momentum`` ...) from a summary's
    ``optimizer``, ``optim_args`` and ``sam_rho``."""
    optim = str(summary.get("optimizer") or "sgd").lower()
    options = dict(item.split("=", 1) for item in str(summary.get("optim_args") or "").replace(" ", "").split(",")
                   if "=" in item)  # fmt: skip
    try:
        momentum = float(options.get("momentum", 0.0))
    except ValueError:
        momentum = 0.0
    if "adam" in optim:
        base = "Adam"
    elif "sgd" in optim:
        base = "momentum" if momentum > 0 else "SGD"
    else:
        base = optim
    if float(summary.get("sam_rho") or 0.0) > 0:
        return "SAM" if base == "SGD" else f"SAM-{base}"
    return base


def _curve_means(summary: Mapping[str, Any]) -> Mapping[str, Any] | None:
    runs: Mapping[str, Mapping[str, Any]] = summary.get("runs") or {}
    return next(iter(runs.values()), None)


def effective_lr_table(summary: Mapping[str, Any], until_step: int = TABLE1_STEPS) -> dict[str, Any] | None:
    """One row of the paper's Table 1: ``{"optimizer", "learning_rate", "dominant", "bulk", "measurements"}``, the
    mean effective learning rates of the (unprojected) shared prefix over its measurements before ``until_step``;
    ``None`` when the summary has no effective-learning-rate curves there."""
    from .diagnostics import effective_lr_means

    run = _curve_means(summary)
    means = effective_lr_means(run, min(until_step, int(summary.get("switch_step") or until_step))) if run else None
    if means is None:
        return None
    return {"optimizer": optimizer_label(summary), "learning_rate": summary.get("learning_rate"), **means}


def _second_half_ratio(run: Mapping[str, Any], summary: Mapping[str, Any]) -> float | None:
    """Final loss / loss at the first measurement at or after the middle of the branch (``None`` if not measured)."""
    switch, end = int(summary.get("switch_step") or 0), int(summary.get("max_steps") or 0)
    curve = [(int(s), float(v)) for s, v in run.get("loss_curve") or [] if int(s) >= switch]
    mid = next((v for s, v in curve if s >= (switch + end) / 2), None)
    return ratio(run.get("final_loss"), mid) if mid is not None and curve and curve[-1][0] > switch else None


def _extra_claims(name: str, summary: Mapping[str, Any]) -> list[Claim]:
    """Edge of stability, spectrum gap and effective-learning-rate amplification, where the summary has the data."""
    from .diagnostics import sharpness_summary, spectrum_gap

    runs: Mapping[str, Mapping[str, Any]] = summary.get("runs") or {}
    out: list[Claim] = []
    gd, dom, bulk = (runs.get(m) for m in ("gd", "dominant-gd", "bulk-gd"))
    if summary.get("prefix_optimizer") == "gd" and (dom or bulk):
        sharp = sharpness_summary(summary)
        text = "GD reaches the edge of stability (λ₁ ≈ 2/η)"
        if sharp is None or sharp["max_prefix"] is None:
            out.append(Claim(text, name, "n/a", "no sharpness (λ₁) measured during the GD prefix"))
        else:
            r = sharp["max_prefix"] / sharp["two_over_lr"]
            ev = (
                f"max λ₁ in the GD prefix {sharp['max_prefix']:.4g} = {r:.3f} × 2/η (2/η = {sharp['two_over_lr']:.4g}; "
                f"λ₁ at the switch {format_value(sharp['at_switch'])}; first ≥ {EOS_RATIO} × 2/η at step "
                f"{format_value(sharp['first_step_90'])}; reached if ≥ {EOS_RATIO} × 2/η)"
            )
            out.append(Claim(text, name, "yes" if r >= EOS_RATIO else "no", ev))
        gd_r = ratio(gd.get("final_loss"), gd.get("loss_at_switch")) if gd else None
        flat = gd_r is None or gd_r >= DOM_STALL_RATIO
        why = f"; inconclusive: GD itself only reached {format_value(gd_r, '.3f')} × its loss at the switch"
        text = "Dom-GD fails at the edge of stability"
        # At the edge of stability the loss oscillates along the sharp directions, and a projection onto them first
        # damps that oscillation (a one-time drop): the stall is judged on the second half of the branch.
        half = _second_half_ratio(dom, summary) if dom else None
        gd_half = _second_half_ratio(gd, summary) if gd else None
        r = ratio(dom.get("final_loss"), dom.get("loss_at_switch")) if dom else None
        if half is None:
            out.append(Claim(text, name, "n/a", "no dominant-gd branch (or too few measurements after the switch)"))
        else:
            flat = gd_half is None or gd_half >= DOM_STALL_RATIO
            why = f"; inconclusive: GD itself only reached {format_value(gd_half, '.3f')} × its loss at mid-branch"
            ans = "inconclusive" if flat else "yes" if half >= DOM_STALL_RATIO else "no"
            ev = (
                f"second half of the branch: Dom-GD final/mid-branch loss = {half:.3f} vs GD "
                f"{format_value(gd_half, '.3f')} (fails if ≥ {DOM_STALL_RATIO}); over the whole branch final/switch "
                f"= {format_value(r, '.3f')} vs GD {format_value(gd_r, '.3f')}"
            )
            out.append(Claim(text, name, ans, ev + (why if flat else "")))
        text = "Bulk-GD is as effective as GD at the edge of stability"
        r = ratio(bulk.get("final_loss"), gd.get("final_loss")) if bulk and gd else None
        if r is None:
            out.append(Claim(text, name, "n/a", "no bulk-gd or gd branch"))
        else:
            ans = "inconclusive" if flat else "yes" if r <= BULK_TRACK_RATIO else "no"
            ev = f"Bulk-GD/GD final loss = {r:.3f} (as effective if ≤ {BULK_TRACK_RATIO})"
            out.append(Claim(text, name, ans, ev + (why if flat else "")))
    gaps = {m: g for m, r in runs.items() if (g := spectrum_gap(r)) is not None}
    if gaps:
        mode = "sgd" if "sgd" in gaps else next(iter(gaps))
        g = gaps[mode]
        k = summary.get("k")
        ok = g["ratio"] >= SPECTRUM_GAP_RATIO and g["min_ratio"] > 1.0
        ev = (
            f"{mode} branch incl. prefix, {g['measurements']} measurements: mean λ_{k} {g['lambda_k']:.4g} vs mean "
            f"λ_{k}+1 {g['lambda_k_plus_1']:.4g}; λ_k/λ_k+1 mean {g['ratio']:.2f}, min {g['min_ratio']:.2f} "
            f"(separate if mean ≥ {SPECTRUM_GAP_RATIO} and min > 1)"
        )
        out.append(
            Claim("the top-k eigenvalues separate from the rest (spectrum gap)", name, "yes" if ok else "no", ev)
        )
    row = effective_lr_table(summary)
    label = optimizer_label(summary)
    # The paper's Table 1 compares SGD with momentum and Adam (SAM is a different question: Dom-/Bulk-SAM above).
    if row is not None and label in ("momentum", "Adam") and summary.get("prefix_optimizer", "sgd") == "sgd":
        dom_lr, bulk_lr = row["dominant"], row["bulk"]
        amp = bulk_lr / dom_lr if dom_lr > 0 else None
        ans = "yes" if (dom_lr <= 0 < bulk_lr) or (amp is not None and amp >= AMPLIFICATION_RATIO) else "no"
        ev = (
            f"mean η_dom {dom_lr:.4g}, η_bulk {bulk_lr:.4g} over {row['measurements']} measurements before step "
            f"{min(TABLE1_STEPS, int(summary.get('switch_step') or TABLE1_STEPS))} (lr {row['learning_rate']}); "
            f"η_bulk/η_dom = {format_value(amp, '.2f')} (amplified if ≥ {AMPLIFICATION_RATIO} or η_dom ≤ 0 < η_bulk)"
        )
        out.append(Claim(f"{label} amplifies the bulk effective LR over the dominant one", name, ans, ev))
    return out
