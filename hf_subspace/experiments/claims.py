"""The paper's qualitative claims, answered from experiments' ``summary.json`` files (every rule in one place).

Used by the quick start (its ✓/✗ lines), by the reference cards and by the tests. The rules were fixed before the
reference runs that answer them, and every projected branch is judged against its unprojected twin (the branch with
the same optimizer and no projection, leaving the same prefix at the same step):

- **progress** of a branch: :math:`P = \\ln(L_\\text{switch} / L_\\text{final})` (loss over the Hessian set);
- **Dom-X fails to train** (X = SGD, momentum, Adam, SAM, GD): in every seed :math:`P_\\text{dom} \\le`
  :data:`DOM_PROGRESS_MAX` × :math:`P_X`, and the slope of ln L over the second half of the Dom branch is not below 0
  by more than the seed spread (:func:`slope_spread`; a rising loss does not train either);
- **Bulk-X is as effective as X**: :math:`P_\\text{bulk} / P_X` in :data:`BULK_PROGRESS_RANGE` in every seed; above
  the range the answer is "different regime" (Bulk trained much better: not the paper's "as effective");
- **SGD→GD loses the alignment**: GD's mean χ_k after the switch ≤ :data:`UNALIGNED_MAX` while SGD's is ≥
  :data:`ALIGNED_MIN`;
- **GD→SGD restores it**: after a GD prefix, χ_k climbs from ≤ :data:`UNALIGNED_MAX` at the switch to ≥
  :data:`ALIGNED_MIN` within :data:`RESTORE_WITHIN_STEPS` steps of SGD;
- **an optimizer amplifies the bulk** (the paper's Table 1): the per-step ratio η_bulk/η_dom over every measured
  step of the first :data:`TABLE1_STEPS` (its median per seed) has a 95 % interval across seeds lying entirely above
  SGD's;
- **edge of stability**: λ₁ reaches :data:`EOS_RATIO` × 2/η during the GD prefix (after step 0, the
  initialisation); **spectrum gap**: mean λ_k/λ_{k+1} ≥ :data:`SPECTRUM_GAP_RATIO` with minimum > 1;
- an SGD↔GD verdict whose GD part reaches η·λ₁ ≥ 2 × :data:`EOS_RATIO` (after step 0) is **flagged** as an
  edge-of-stability result; the verdict itself is unchanged.

A claim's answer is ``"yes"``, ``"no"``, ``"different regime"``, ``"inconclusive"`` (the seeds disagree, the
unprojected twin itself did not train, or the run cannot answer) or ``"n/a"`` (the branches needed were not run).
Every answer's evidence gives the per-seed numbers (mean ± standard deviation over the seeds).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "ALIGNED_MIN",
    "BULK_PROGRESS_RANGE",
    "DOM_PROGRESS_MAX",
    "EOS_RATIO",
    "MIN_TWIN_PROGRESS",
    "PAPER_ANSWERS",
    "RESTORE_WITHIN_STEPS",
    "SLOPE_SPREAD",
    "SPECTRUM_GAP_RATIO",
    "TABLE1_STEPS",
    "UNALIGNED_MAX",
    "Claim",
    "amplification_interval",
    "claim_rules_text",
    "edge_of_stability",
    "effective_lr_table",
    "evaluate_claims",
    "format_value",
    "optimizer_label",
    "paper_answer",
    "progress",
    "ratio",
    "second_half_slope",
    "slope_spread",
]

DOM_PROGRESS_MAX = 0.1
"""Dom-X fails to train when its progress is at most this fraction of X's (in every seed)."""
BULK_PROGRESS_RANGE = (0.75, 1.5)
"""Bulk-X is as effective as X when its progress is within this range of X's (in every seed)."""
MIN_TWIN_PROGRESS = 0.05
"""The unprojected twin must itself make at least this progress (ln units, ≈ 5 % lower loss) for a Dom/Bulk verdict."""
SLOPE_SPREAD = 2.0
""""Not descending beyond the seed spread of 0": mean slope ≥ −this many standard deviations of the per-seed slopes
(one seed: of the slope's standard error from its least-squares fit). One-sided: a Dom branch whose loss rises does
not train either."""
ALIGNED_MIN = 0.7
"""χ_k at or above this is "aligned"."""
UNALIGNED_MAX = 0.3
"""χ_k at or below this is "not aligned"."""
RESTORE_WITHIN_STEPS = 200
"""GD→SGD restores the alignment when χ_k reaches :data:`ALIGNED_MIN` within this many SGD steps after the switch."""
EOS_RATIO = 0.9
"""GD reaches the edge of stability when λ₁ reaches this fraction of 2/η during the GD prefix."""
SPECTRUM_GAP_RATIO = 1.5
"""The top-k eigenvalues separate from the rest when the mean λ_k/λ_{k+1} is at least this (and its minimum > 1)."""
TABLE1_STEPS = 1000
"""The paper's Table 1 uses the first 1,000 steps."""

PAPER_ANSWERS: dict[str, str] = {
    "Dom-SGD fails to train": "yes",
    "Bulk-SGD is as effective as SGD": "yes",
    "SGD→GD loses the alignment": "yes",
    "GD→SGD restores the alignment": "yes",
}
"""The paper's answer to each claim (Song, Ahn & Yun 2025); the claims about other optimizers are also "yes"."""

Summary = Mapping[str, Any]


@dataclass
class Claim:
    """One of the paper's claims, answered for one reference run (all its seeds)."""

    claim: str
    run: str
    answer: str  # "yes", "no", "different regime", "inconclusive" or "n/a"
    evidence: str


# ----------------------------------------------------------------------------------------------- statistics


def ratio(a: Any, b: Any) -> float | None:
    return a / b if isinstance(a, int | float) and isinstance(b, int | float) and b > 0 else None


def format_value(value: Any, spec: str = ".4g") -> str:
    return "—" if value is None else format(value, spec) if isinstance(value, int | float) else str(value)


def progress(run: Mapping[str, Any] | None) -> float | None:
    """ln(loss at the switch / final loss) of a branch (``None`` when either is missing or not positive)."""
    if not run:
        return None
    a, b = run.get("loss_at_switch"), run.get("final_loss")
    if not (isinstance(a, int | float) and isinstance(b, int | float)) or a <= 0 or b <= 0:
        return None
    return math.log(a / b)


def second_half_slope(run: Mapping[str, Any], switch: int, end: int) -> tuple[float, float] | None:
    """Least-squares slope of ln(loss) per step over the measurements in the second half of a branch, and its
    standard error; ``None`` with fewer than three measurements there."""
    pts = [(int(s), float(v)) for s, v in run.get("loss_curve") or [] if int(s) >= (switch + end) / 2 and v > 0]
    if len(pts) < 3:
        return None
    x = np.array([p[0] for p in pts], dtype=float)
    y = np.log([p[1] for p in pts])
    xc = x - x.mean()
    slope = float((xc * (y - y.mean())).sum() / (xc**2).sum())
    resid = y - y.mean() - slope * xc
    stderr = float(math.sqrt((resid**2).sum() / (len(x) - 2) / (xc**2).sum()))
    return slope, stderr


def slope_spread(fits: Sequence[tuple[float, float]]) -> tuple[float, float, bool]:
    """``(mean slope, spread, not_descending)``: the spread is the standard deviation of the per-seed slopes (one
    seed: the fit's standard error); ``not_descending`` says mean ≥ −:data:`SLOPE_SPREAD` × spread, i.e. the loss is
    not still going down beyond the seed spread of 0 (a loss that rises does not train either)."""
    slopes = np.array([f[0] for f in fits], dtype=float)
    spread = float(slopes.std(ddof=1)) if len(slopes) > 1 else float(fits[0][1])
    mean = float(slopes.mean())
    return mean, spread, mean >= -SLOPE_SPREAD * spread


def _mean_sd(values: Sequence[float | None], spec: str = ".3f") -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "—"
    if len(vals) == 1:
        return format(vals[0], spec)
    return f"{format(float(np.mean(vals)), spec)} ± {format(float(np.std(vals, ddof=1)), spec)}"


def _combine(answers: Sequence[str]) -> str:
    """One answer from the per-seed answers: their common answer, else "inconclusive"."""
    return answers[0] if len(set(answers)) == 1 else "inconclusive"


def _seeds_text(answers: Sequence[str]) -> str:
    if len(answers) < 2:
        return ""
    return f"; per seed: {', '.join(answers)}" + ("" if len(set(answers)) == 1 else " (seeds disagree)")


# ----------------------------------------------------------------------------------------------- the branches


def _unprojected(runs: Mapping[str, Mapping[str, Any]], full_batch: bool) -> Mapping[str, Any] | None:
    """The unprojected branch (``subspace_mode == "none"``) with minibatch or full-batch steps, whatever its name."""
    named = runs.get("gd" if full_batch else "sgd")
    if named is not None:
        return named
    return next(
        (r for r in runs.values() if r.get("subspace_mode") == "none" and bool(r.get("full_batch")) == full_batch),
        None,
    )


def _branch(summary: Summary, mode: str) -> Mapping[str, Any] | None:
    runs: Mapping[str, Mapping[str, Any]] = summary.get("runs") or {}
    return runs.get(mode)


def _missing(summary: Summary, mode: str, full_batch: bool) -> str:
    """Why a projected claim has no answer: which of the branch and its unprojected twin the run lacks."""
    lacks = [f"{mode} branch"] if progress(_branch(summary, mode)) is None else []
    if progress(_unprojected(summary.get("runs") or {}, full_batch)) is None:
        lacks.append("gd branch (the unprojected twin)" if full_batch else "unprojected branch (the twin)")
    return f"not run: this run has no {' and no '.join(lacks)} (its card says why; --modes adds it)"


Part = Literal["prefix", "branch", "all"]


def _max_eta_lambda(
    run: Mapping[str, Any] | None, summary: Summary, part: Part, skip_init: bool = False
) -> float | None:
    """The largest η·λ₁ along ``run``'s measured λ₁: ``part`` "prefix" (steps up to the switch), "branch" (after
    it) or "all", without step 0 (the initialisation, before any step) if ``skip_init``; ``None`` where nothing
    was measured."""
    switch = int(summary.get("switch_step") or 0)
    keep = {"prefix": lambda st: st <= switch, "branch": lambda st: st > switch, "all": lambda st: True}[part]
    curve = ((run or {}).get("curves") or {}).get("eigenvalue_top_01") or []
    lam = [float(v) for st, v in curve if keep(int(st)) and not (skip_init and int(st) == 0)]
    lr = summary.get("learning_rate")
    return max(lam) * float(lr) if lam and isinstance(lr, int | float) else None


def edge_of_stability(summary: Summary, branch: str, part: Part = "all", skip_init: bool = False) -> float | None:
    """The largest η·λ₁ measured along branch ``branch``: ``part`` "prefix" (steps up to the switch), "branch"
    (after it) or "all", without step 0 (the initialisation) if ``skip_init``; ≥ 2 is beyond the stability edge
    of GD (λ₁ > 2/η). ``None`` where nothing was measured."""
    return _max_eta_lambda((summary.get("runs") or {}).get(branch), summary, part, skip_init)


def _edge_flag(summaries: Sequence[Summary], full_batch_part: Literal["prefix", "branch"]) -> str:
    """A flag for an SGD↔GD verdict whose GD part (the GD branch after the switch, ``full_batch_part="branch"``, or
    the GD prefix after its first step, ``"prefix"``) reaches the edge of stability in some seed (max η·λ₁ ≥ 2 ×
    :data:`EOS_RATIO`): the claims are about GD below the edge, where the paper reports the loss of alignment."""
    values = []
    for s in summaries:
        runs = s.get("runs") or {}
        run = _unprojected(runs, True) if full_batch_part == "branch" else next(iter(runs.values()), None)
        value = _max_eta_lambda(run, s, full_batch_part, skip_init=True)
        if value is not None:
            values.append(value)
    edge = 2 * EOS_RATIO
    if not values or max(values) < edge:
        return ""
    where = "GD branch" if full_batch_part == "branch" else "GD prefix"
    return f"; flagged: the {where} is at the edge of stability (max η·λ₁ {max(values):.2f} ≥ {edge:g})"


def _dom_claim(text: str, name: str, summaries: Sequence[Summary], dom_mode: str, full_batch: bool) -> Claim:
    """Dom-X fails to train, judged against X (the unprojected twin) in every seed."""
    per_seed, ratios, fits = [], [], []
    for s in summaries:
        dom, twin = _branch(s, dom_mode), _unprojected(s.get("runs") or {}, full_batch)
        p_dom, p_twin = progress(dom), progress(twin)
        if p_dom is None or p_twin is None:
            return Claim(text, name, "n/a", _missing(s, dom_mode, full_batch))
        if p_twin < MIN_TWIN_PROGRESS:
            per_seed.append("inconclusive")
        else:
            per_seed.append("yes" if p_dom <= DOM_PROGRESS_MAX * p_twin else "no")
        ratios.append(p_dom / p_twin if p_twin > 0 else None)
        fit = second_half_slope(dom, int(s.get("switch_step") or 0), int(s.get("max_steps") or 0))  # type: ignore[arg-type]
        if fit is not None:
            fits.append(fit)
    answer = _combine(per_seed)
    twin_p = [progress(_unprojected(s.get("runs") or {}, full_batch)) for s in summaries]
    evidence = (
        f"progress ln(L_switch/L_final): Dom {_mean_sd([progress(_branch(s, dom_mode)) for s in summaries])} vs "
        f"unprojected {_mean_sd(twin_p)}; Dom/unprojected = {_mean_sd(ratios)} (fails if ≤ {DOM_PROGRESS_MAX} in "
        f"every seed)"
    )
    if any(p is not None and p < MIN_TWIN_PROGRESS for p in twin_p):
        evidence += f"; the unprojected twin made < {MIN_TWIN_PROGRESS} progress in some seed"
    if not fits:
        evidence += "; second-half slope not measured"
        answer = "inconclusive" if answer == "yes" else answer
    else:
        mean, spread, within = slope_spread(fits)
        evidence += (
            f"; second-half slope of ln L {mean:.3g}/step, spread {spread:.3g} "
            f"({'not descending' if within else 'still descending'}: fails to train if ≥ −{SLOPE_SPREAD:g} spreads)"
        )
        if answer == "yes" and not within:
            answer = "no"
    return Claim(text, name, answer, evidence + _seeds_text(per_seed))


def _bulk_claim(text: str, name: str, summaries: Sequence[Summary], bulk_mode: str, full_batch: bool) -> Claim:
    """Bulk-X is as effective as X: progress within :data:`BULK_PROGRESS_RANGE` of X's in every seed."""
    lo, hi = BULK_PROGRESS_RANGE
    per_seed, ratios = [], []
    for s in summaries:
        p_bulk, p_twin = progress(_branch(s, bulk_mode)), progress(_unprojected(s.get("runs") or {}, full_batch))
        if p_bulk is None or p_twin is None:
            return Claim(text, name, "n/a", _missing(s, bulk_mode, full_batch))
        if p_twin < MIN_TWIN_PROGRESS:
            per_seed.append("inconclusive")
            ratios.append(None)
            continue
        r = p_bulk / p_twin
        ratios.append(r)
        per_seed.append("yes" if lo <= r <= hi else "different regime" if r > hi else "no")
    evidence = (
        f"Bulk/unprojected progress = {_mean_sd(ratios)} (as effective if in [{lo}, {hi}] in every seed; above: a "
        "different regime)"
    )
    return Claim(text, name, _combine(per_seed), evidence + _seeds_text(per_seed))


def _gd_loses_claim(name: str, summaries: Sequence[Summary]) -> Claim:
    text = "SGD→GD loses the alignment"
    per_seed, gd_chi, sgd_chi = [], [], []
    for s in summaries:
        runs = s.get("runs") or {}
        gd, sgd = _unprojected(runs, True), _unprojected(runs, False)
        if not gd or not sgd or gd.get("mean_chi_k") is None or sgd.get("mean_chi_k") is None:
            return Claim(text, name, "n/a", "no gd branch (or χ_k not measured after the switch)")
        g, m = float(gd["mean_chi_k"]), float(sgd["mean_chi_k"])
        gd_chi.append(g)
        sgd_chi.append(m)
        per_seed.append("inconclusive" if m < ALIGNED_MIN else "yes" if g <= UNALIGNED_MAX else "no")
    evidence = (
        f"mean χ_k after the switch: GD {_mean_sd(gd_chi)}, SGD {_mean_sd(sgd_chi)} (loses if GD ≤ {UNALIGNED_MAX} "
        f"while SGD ≥ {ALIGNED_MIN})"
    )
    if "inconclusive" in per_seed:
        evidence += (
            f"; SGD itself is not aligned (mean χ_k < {ALIGNED_MIN}) in {per_seed.count('inconclusive')} seed(s)"
        )
    return Claim(text, name, _combine(per_seed), evidence + _seeds_text(per_seed) + _edge_flag(summaries, "branch"))


def _gd_restores_claim(name: str, summaries: Sequence[Summary]) -> Claim:
    text = "GD→SGD restores the alignment"
    per_seed, before, took = [], [], []
    for s in summaries:
        sgd = _unprojected(s.get("runs") or {}, False)
        switch = int(s.get("switch_step") or 0)
        if not sgd:
            return Claim(text, name, "n/a", "no sgd branch after the GD prefix (add sgd to --modes)")
        chi0 = sgd.get("chi_k_at_switch")
        if chi0 is None:
            return Claim(
                text, name, "n/a", "χ_k not measured at the switch (choose --subspace_alignment_steps dividing it)"
            )
        after = [(int(st), float(v)) for st, v in sgd.get("chi_k_curve") or [] if int(st) > switch]
        if not after:
            return Claim(text, name, "n/a", "χ_k not measured after the switch")
        first = next((st - switch for st, v in after if v >= ALIGNED_MIN), None)
        before.append(float(chi0))
        took.append(first)
        if chi0 > UNALIGNED_MAX:
            per_seed.append("inconclusive")
        else:
            per_seed.append("yes" if first is not None and first <= RESTORE_WITHIN_STEPS else "no")
    steps = ", ".join("never" if t is None else str(t) for t in took)
    evidence = (
        f"χ_k at the switch (after GD) {_mean_sd(before)}; steps of SGD until χ_k ≥ {ALIGNED_MIN}: {steps} "
        f"(restores if from ≤ {UNALIGNED_MAX} to ≥ {ALIGNED_MIN} within {RESTORE_WITHIN_STEPS} steps)"
    )
    if "inconclusive" in per_seed:
        evidence += (
            f"; nothing to restore: GD kept χ_k above {UNALIGNED_MAX} in {per_seed.count('inconclusive')} seed(s)"
        )
    return Claim(text, name, _combine(per_seed), evidence + _seeds_text(per_seed) + _edge_flag(summaries, "prefix"))


# ----------------------------------------------------------------------------------------------- the optimizer


def optimizer_label(summary: Summary) -> str:
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


def paper_answer(claim: str) -> str:
    """The paper's answer to a claim of :func:`evaluate_claims` (``"yes"`` for every claim it makes)."""
    return PAPER_ANSWERS.get(claim, "yes")


def _prefix_lrs(summary: Summary, until_step: int) -> list[tuple[float, float]]:
    """``(η_dom, η_bulk)`` at every measured step of the unprojected prefix before ``until_step`` (and the switch)."""
    runs: Mapping[str, Mapping[str, Any]] = summary.get("runs") or {}
    run = next(iter(runs.values()), None)
    if run is None:
        return []
    end = min(until_step, int(summary.get("switch_step") or until_step))
    curves = run.get("curves") or {}
    dom = {int(s): float(v) for s, v in curves.get("effective_lr_dominant") or [] if int(s) < end}
    bulk = {int(s): float(v) for s, v in curves.get("effective_lr_bulk") or [] if int(s) < end}
    return [(dom[s], bulk[s]) for s in sorted(dom) if s in bulk]


def effective_lr_table(summary: Summary, until_step: int = TABLE1_STEPS) -> dict[str, Any] | None:
    """One row of the paper's Table 1: ``{"optimizer", "learning_rate", "dominant", "bulk", "measurements"}``, the
    mean effective learning rates of the shared prefix over its measurements before ``until_step`` (and the switch);
    ``None`` without any."""
    pairs = _prefix_lrs(summary, until_step)
    if not pairs:
        return None
    arr = np.asarray(pairs)
    return {
        "optimizer": optimizer_label(summary),
        "learning_rate": summary.get("learning_rate"),
        "dominant": float(arr[:, 0].mean()),
        "bulk": float(arr[:, 1].mean()),
        "measurements": len(pairs),
    }


def amplification_interval(summaries: Sequence[Summary]) -> tuple[float, float, float, int] | None:
    """``(mean, low, high, n)``: per seed the median over the prefix's measured steps (before
    :data:`TABLE1_STEPS`) of η_bulk/η_dom, and the 95 % t-interval of their mean across the ``n`` seeds (``None``
    with fewer than 2 seeds or a seed with fewer than 3 measured steps)."""
    medians = []
    for s in summaries:
        pairs = [(d, b) for d, b in _prefix_lrs(s, TABLE1_STEPS) if d != 0.0]
        if len(pairs) < 3:
            return None
        medians.append(float(np.median([b / d for d, b in pairs])))
    if len(medians) < 2:
        return None
    from scipy import stats

    mean, sd, n = float(np.mean(medians)), float(np.std(medians, ddof=1)), len(medians)
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half, n


def _amplification_claim(name: str, summaries: Sequence[Summary], baseline: Sequence[Summary] | None) -> Claim:
    label = optimizer_label(summaries[0])
    text = f"{label} amplifies the bulk effective LR over the dominant one"
    mine = amplification_interval(summaries)
    base = amplification_interval(baseline) if baseline else None
    if mine is None or base is None:
        why = "needs ≥ 2 seeds with per-step effective learning rates before the switch, here and in an SGD run"
        return Claim(text, name, "inconclusive", why)
    ans = "yes" if mine[1] > base[2] else "no"
    ev = (
        f"median per-step η_bulk/η_dom over the prefix's first {TABLE1_STEPS} steps: {label} {mine[0]:.3g} "
        f"(95 % interval [{mine[1]:.3g}, {mine[2]:.3g}], {mine[3]} seeds) vs SGD {base[0]:.3g} ([{base[1]:.3g}, "
        f"{base[2]:.3g}]); amplifies if the interval lies above SGD's"
    )
    return Claim(text, name, ans, ev)


# ----------------------------------------------------------------------------------------------- all claims


def _eos_claim(name: str, summaries: Sequence[Summary]) -> Claim:
    from .diagnostics import sharpness_summary

    text = "GD reaches the edge of stability (λ₁ ≈ 2/η)"
    per_seed, reached = [], []
    for s in summaries:
        sharp = sharpness_summary(s)
        if sharp is None or sharp["max_prefix"] is None:
            return Claim(text, name, "n/a", "no sharpness (λ₁) measured during the GD prefix")
        r = sharp["max_prefix"] / sharp["two_over_lr"]
        reached.append(r)
        per_seed.append("yes" if r >= EOS_RATIO else "no")
    ev = f"max λ₁ in the GD prefix after step 0 = {_mean_sd(reached)} × 2/η (reached if ≥ {EOS_RATIO})"
    return Claim(text, name, _combine(per_seed), ev + _seeds_text(per_seed))


def _gap_claim(name: str, summaries: Sequence[Summary]) -> Claim | None:
    from .diagnostics import spectrum_gap

    per_seed, means, mins = [], [], []
    for s in summaries:
        runs = s.get("runs") or {}
        gaps = {m: g for m, r in runs.items() if (g := spectrum_gap(r)) is not None}
        if not gaps:
            return None
        g = gaps.get("sgd") or next(iter(gaps.values()))
        means.append(g["ratio"])
        mins.append(g["min_ratio"])
        per_seed.append("yes" if g["ratio"] >= SPECTRUM_GAP_RATIO and g["min_ratio"] > 1.0 else "no")
    ev = (
        f"λ_k/λ_k+1 along the run: mean {_mean_sd(means, '.2f')}, min {_mean_sd(mins, '.2f')} (separate if mean ≥ "
        f"{SPECTRUM_GAP_RATIO} and min > 1)"
    )
    text = "the top-k eigenvalues separate from the rest (spectrum gap)"
    return Claim(text, name, _combine(per_seed), ev + _seeds_text(per_seed))


def evaluate_claims(
    name: str,
    summaries: Summary | Sequence[Summary],
    gd_prefix_run: str | None = None,
    baseline: Sequence[Summary] | None = None,
) -> list[Claim]:
    """Answer the paper's claims from one run's summaries (one per seed) by the module's rules.

    Args:
        name: the run's name (copied into each claim).
        summaries: the ``summary.json`` of each seed (or a single one).
        gd_prefix_run: the run with a GD prefix that answers GD→SGD for this one, named in the evidence.
        baseline: the SGD run's summaries (same data and model) that momentum/Adam amplification is compared with.

    Returns:
        The claims the run's branches can answer; ``n/a`` rows for the paper's four main claims it cannot.
    """
    seeds: list[Summary] = [summaries] if isinstance(summaries, Mapping) else list(summaries)
    first = seeds[0]
    runs: Mapping[str, Mapping[str, Any]] = first.get("runs") or {}
    label = optimizer_label(first)
    out: list[Claim] = []
    if str(first.get("prefix_optimizer", "sgd")) == "gd":
        why = "the branches follow a GD prefix; the claim is about branches after an SGD prefix"
        if "dominant-gd" in runs or "bulk-gd" in runs:
            out.append(_eos_claim(name, seeds))
            out.append(_dom_claim("Dom-GD fails to train at the edge of stability", name, seeds, "dominant-gd", True))
            out.append(
                _bulk_claim("Bulk-GD is as effective as GD at the edge of stability", name, seeds, "bulk-gd", True)
            )
        else:
            out += [Claim(t, name, "n/a", why) for t in ("Dom-SGD fails to train", "Bulk-SGD is as effective as SGD")]
            out.append(Claim("SGD→GD loses the alignment", name, "n/a", why))
            out.append(_gd_restores_claim(name, seeds))
    else:
        out.append(_dom_claim(f"Dom-{label} fails to train", name, seeds, "dominant", False))
        out.append(_bulk_claim(f"Bulk-{label} is as effective as {label}", name, seeds, "bulk", False))
        out.append(_gd_loses_claim(name, seeds))
        where = f" (reference run {gd_prefix_run})" if gd_prefix_run else ""
        out.append(Claim("GD→SGD restores the alignment", name, "n/a", f"needs a GD prefix: --prefix gd{where}"))
        if label in ("momentum", "Adam"):
            out.append(_amplification_claim(name, seeds, baseline))
    gap = _gap_claim(name, seeds)
    if gap is not None:
        out.append(gap)
    return [
        c for c in out if not (c.answer == "n/a" and c.claim.startswith(("Dom-SGD", "Bulk-SGD")) and label != "SGD")
    ]


def claim_rules_text() -> str:
    """The rules in words, for the cards' index (generated from the constants above)."""
    lo, hi = BULK_PROGRESS_RANGE
    return (
        "Progress of a branch P = ln(L_switch / L_final), loss over the Hessian set; each projected branch is judged "
        "against its unprojected twin (same prefix, same optimizer, no projection), in every seed. "
        f"Dom-X fails to train: P_dom ≤ {DOM_PROGRESS_MAX} × P_X in every seed, and the least-squares slope of "
        f"ln L over the second half of the Dom branch not below −{SLOPE_SPREAD:g} seed standard deviations (one "
        f"seed: {SLOPE_SPREAD:g} standard errors of the fit): not still descending (one-sided since the first "
        "digits seeds, where Dom's loss rose by 1.9e-5 per step in every seed; the issue's wording, 'within the "
        "seed spread of 0', would have called a rising loss 'training'). Bulk-X is as effective as X: P_bulk / P_X in "
        f'[{lo}, {hi}] in every seed (above: "different regime"). Both need P_X ≥ {MIN_TWIN_PROGRESS}. '
        f"SGD→GD loses the alignment: GD's mean χ_k after the switch ≤ {UNALIGNED_MAX} while SGD's ≥ {ALIGNED_MIN}. "
        f"GD→SGD restores it: after a GD prefix, χ_k climbs from ≤ {UNALIGNED_MAX} at the switch to ≥ "
        f"{ALIGNED_MIN} within {RESTORE_WITHIN_STEPS} SGD steps. Amplification (Table 1): per seed the median over "
        f'the prefix\'s measured steps before step {TABLE1_STEPS} of η_bulk/η_dom; "amplifies" when the 95 % '
        "interval of its mean across seeds lies above SGD's. Edge of stability: max λ₁ in the GD prefix after step 0 ≥ "
        f"{EOS_RATIO} × 2/η. Spectrum gap: mean λ_k/λ_k+1 ≥ {SPECTRUM_GAP_RATIO} with minimum > 1. Seeds that "
        'disagree give "inconclusive"; so do an unprojected twin that did not train, an SGD branch that is not '
        f"aligned itself (SGD→GD: SGD's mean χ_k < {ALIGNED_MIN}) and a GD prefix that leaves χ_k above "
        f"{UNALIGNED_MAX} (GD→SGD: nothing to restore). An SGD↔GD verdict whose GD part reaches max η·λ₁ ≥ "
        f"{2 * EOS_RATIO:g} after step 0 is flagged as an edge-of-stability result (the verdict is unchanged): the "
        "claims are about GD below the edge, and at the edge GD's χ_k is high again (mlp_mnist_eos: 0.99; SST-2's "
        "GD branch swings up to 1.0 once λ₁ reaches 2/η)."
    )
