"""What the reference cards say: the "Reference run" section of a branch card and the cards' index
(``model_cards/README.md``) with the claims of :mod:`~hf_subspace.experiments.claims` answered from the summaries.

Every number comes from a stored ``summary.json`` (its ``seed_summaries`` for the other seeds of a multi-seed run);
:mod:`~hf_subspace.experiments.cards` runs the experiments and writes the files.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .claims import (
    TABLE1_STEPS,
    amplification_interval,
    claim_rules_text,
    edge_of_stability,
    effective_lr_table,
    evaluate_claims,
    format_value,
    paper_answer,
    ratio,
)

__all__ = [
    "branch_card_section",
    "edge_of_stability",
    "insert_section",
    "render_index",
    "seed_summaries",
    "stale_basis_note",
]


def stale_basis_note(summary: Mapping[str, Any]) -> str | None:
    """A warning when a projected branch used a basis refreshed only every N > 1 steps without certified tracking
    (``subspace_basis_tol``): the basis may then be far from the Hessian's top-k eigenspace between refreshes, so the
    run is not the paper's Dom-/Bulk- method (which recomputes it at every step)."""
    projected = [m for m, b in (summary.get("runs") or {}).items() if b.get("subspace_mode") in ("dominant", "bulk")]
    refresh = int(summary.get("refresh_steps") or 1)
    if not projected or summary.get("basis_tol") is not None or refresh <= 1:
        return None
    return (
        f"**Stale basis**: the projected branches ({', '.join(projected)}) refreshed the basis only every {refresh} "
        "steps without `--subspace_basis_tol`, so between refreshes they projected onto a basis that may be far from "
        "the Hessian's top-k eigenspace: not the paper's method, which recomputes it at every step."
    )


def _audit_text(b: Mapping[str, Any]) -> str:
    audit = b.get("basis_error_audit")
    if not audit:
        return "—"
    return f"{audit['median']:.3g} / {audit['p95']:.3g} / {audit['max']:.3g} (n = {audit['n']})"


def branch_card_section(
    run: Any, branch: str, summary: Mapping[str, Any], record: Mapping[str, Any], figures: Sequence[str]
) -> str:
    """The "Reference run" section added to a branch card (numbers from ``summary.json``)."""
    b = summary["runs"][branch]
    machine = record["machine"]
    n_hessian, n_train = summary.get("hessian_num_samples"), summary.get("num_train")
    subset = isinstance(n_hessian, int) and isinstance(n_train, int) and n_hessian < n_train
    loss_on = f"{n_hessian}-example Hessian subset" if subset else "full training subset"
    rows = [
        (f"loss at the switch ({loss_on})", format_value(b.get("loss_at_switch"))),
        ("final loss", format_value(b.get("final_loss"))),
        ("final / switch", format_value(ratio(b.get("final_loss"), b.get("loss_at_switch")), ".3f")),
        ("mean χ_k after the switch", format_value(b.get("mean_chi_k"), ".3f")),
        (
            "χ_k at the switch / at the end",
            f"{format_value(b.get('chi_k_at_switch'), '.3f')} / {format_value(b.get('final_chi_k'), '.3f')}",
        ),
        ("validation accuracy", format_value(b.get("eval_accuracy"), ".4f")),
        ("Hessian-vector products of the branch", format_value(b.get("hvps_branch"))),
        ("basis error ‖P_used − P_exact‖₂, median / p95 / max of exact checks", _audit_text(b)),
        (
            "max η·λ₁ in the prefix after step 0 / after the switch (≥ 2: beyond GD's stability edge)",
            f"{format_value(edge_of_stability(summary, branch, 'prefix', skip_init=True), '.3g')} / "
            f"{format_value(edge_of_stability(summary, branch, 'branch'), '.3g')}",
        ),
        ("branch wall time", f"{format_value(b.get('wall_time_s'), '.1f')} s"),
        ("whole experiment wall time", f"{record['wall_time_s']:.1f} s"),
    ]
    seeds = seed_summaries(summary)
    rule = summary.get("switch_rule") or {}
    how = f" (the χ_k EMA rule, capped at step {rule.get('cap')})" if rule.get("rule") == "ema" else " (a fixed step)"
    lines = [
        "## Reference run",
        "",
        f"Measured by `hf-subspace cards` ({run.description}). Branch `{branch}` of an experiment with branches "
        f"{', '.join(summary['runs'])}, leaving a shared {_prefix_name(summary)} prefix at step "
        f"{summary['switch_step']}{how} of {summary['max_steps']}.",
        "",
        *([stale, ""] if (stale := stale_basis_note(summary)) else []),
        *(_seed_lines(seeds, branch) if len(seeds) > 1 else []),
        "| quantity | value |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in rows],
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['torch_threads']} torch threads"
        + (f", {machine['gpu']}" if machine.get("gpu") else ", no GPU")
        + f"; {machine['platform']}. Measured {record['date']}.",
        "",
        f"Command (from the repository root; `{record.get('shown_data_root') or 'the data root'}` holds the offline "
        "data):",
        "",
        "```bash",
        record["command"],
        "```",
        *(
            ["", f"The other seeds: the same command with `--seed <s>` and `--output_dir …/seed-<s>` ({others})."]
            if (others := ", ".join(str(s.get("seed", i)) for i, s in enumerate(seeds[1:], 1)))
            else []
        ),
        "",
        "### Differences from the paper's setup",
        "",
        *[f"- {d}" for d in run.differences],
        "",
        *[f"![{Path(p).stem} of {run.name}]({p})\n" for p in figures],
    ]
    return "\n".join(lines)


def _seed_lines(seeds: Sequence[Mapping[str, Any]], branch: str) -> list[str]:
    """A table of the branch in every seed (the quantities above are seed 0's)."""
    rows = [
        "| seed | switch step | loss at switch | final loss | final / switch | mean χ_k | val. accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, s in enumerate(seeds):
        b = (s.get("runs") or {}).get(branch) or {}
        rows.append(
            f"| {s.get('seed', i)} | {s.get('switch_step')} | {format_value(b.get('loss_at_switch'))} | "
            f"{format_value(b.get('final_loss'))} | "
            f"{format_value(ratio(b.get('final_loss'), b.get('loss_at_switch')), '.3f')} | "
            f"{format_value(b.get('mean_chi_k'), '.3f')} | {format_value(b.get('eval_accuracy'), '.4f')} |"
        )
    return [f"Every seed ({len(seeds)}); the table below it is seed {seeds[0].get('seed', 0)}'s:", "", *rows, ""]


def _prefix_name(summary: Mapping[str, Any]) -> str:
    return "full-batch GD" if summary.get("prefix_optimizer", "sgd") == "gd" else "minibatch SGD"


def insert_section(card_text: str, section: str) -> str:
    marker = "\n## Framework versions"
    i = card_text.find(marker)
    return card_text + "\n" + section if i < 0 else card_text[:i] + "\n" + section + card_text[i:]


def render_index(
    entries: Sequence[Mapping[str, Any]],
    unavailable: Mapping[str, str] | None = None,
    gd_prefix_run: Callable[[str], str | None] | None = None,
    amplification_baseline: Callable[[str], str | None] | None = None,
) -> str:
    """``model_cards/README.md``: the table of all runs and the claims computed from their summaries.

    Args:
        entries: ``{"run": ReferenceRun name, "recipe", "summary", "wall_time_s", "command"}`` per run.
        unavailable: ``{run: why}`` for runs listed as not run.
        gd_prefix_run: the run that answers GD→SGD for a given run (named in the evidence), if any.
        amplification_baseline: the plain-SGD run (same data and model) a momentum/Adam run's amplification is
            compared with, if any.
    """
    lines = [
        "# Reference runs",
        "",
        "Generated by `hf-subspace cards` (`model_cards/regenerate.py`); do not edit by hand. Every number comes from "
        "the `summary.json` of the run whose command is in its cards. The runs are shortened for a 2-core CPU (or a short "
        "lease of a GPU, named on those cards): each card lists how it differs from the paper (Song, Ahn & Yun, ICLR "
        "2025).",
        "",
        "| run | recipe | branch | seeds | switch step | loss at switch | final loss | final/switch (over seeds) | "
        "mean χ_k | val. accuracy | basis | wall time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        seeds = seed_summaries(e["summary"])
        first = seeds[0]
        tol = first.get("basis_tol")
        basis = f"certified ≤ {tol:g}" if tol is not None else f"every {first.get('refresh_steps')} steps"
        if stale_basis_note(first):
            basis += " (stale)"
        switches = sorted({int(s.get("switch_step") or 0) for s in seeds})
        for mode, b in first["runs"].items():
            ratios = [
                ratio((s["runs"].get(mode) or {}).get("final_loss"), (s["runs"].get(mode) or {}).get("loss_at_switch"))
                for s in seeds
            ]
            spread = _spread([r for r in ratios if r is not None])
            lines.append(
                f"| [{e['run']}]({e['run']}/{mode}/README.md) | {e['recipe']} | {mode} | {len(seeds)} | "
                f"{'–'.join(map(str, switches[:: max(1, len(switches) - 1)]))} | {format_value(b.get('loss_at_switch'))} "
                f"| {format_value(b.get('final_loss'))} | {spread} | {format_value(b.get('mean_chi_k'), '.3f')} "
                f"| {format_value(b.get('eval_accuracy'), '.3f')} | {basis if b.get('subspace_mode') in ('dominant', 'bulk') else '—'} "
                f"| {format_value(b.get('wall_time_s'), '.1f')} |"
            )
    for name, why in (unavailable or {}).items():
        lines.append(f"| {name} | {name} | — | — | — | — | — | — | — | — | — | not run: {why} |")
    lines += [
        "",
        "Loss, final loss, mean χ_k, accuracy and wall time are seed 0's; final/switch is the mean ± standard "
        "deviation over the seeds. mean χ_k: mean over the measurements after the switch of the fraction of the "
        "full-batch gradient in the top-k Hessian eigenspace. Switch step: the range over the seeds. Basis: how the "
        "projected branches kept their basis (certified: within that distance of the exact top-k eigenspace at "
        "every step; stale: refreshed every N > 1 steps without certification). Wall time: the branch alone.",
        "",
        "## The paper's claims, answered from the measured numbers",
        "",
        f"Rules (`hf_subspace/experiments/claims.py`, fixed before the runs that answer them): {claim_rules_text()}",
        "",
    ]
    by_name = {e["run"]: seed_summaries(e["summary"]) for e in entries}
    rows, tally, inconclusive = [], {"agrees": 0, "disagrees": 0, "inconclusive": 0, "n/a": 0}, []
    for e in entries:
        gd_run = gd_prefix_run(e["run"]) if gd_prefix_run else None
        sgd_run = amplification_baseline(e["run"]) if amplification_baseline else None
        baseline = by_name.get(sgd_run) if sgd_run else None
        for c in evaluate_claims(e["run"], by_name[e["run"]], gd_run, baseline):
            paper = paper_answer(c.claim)
            kind = c.answer if c.answer in ("n/a", "inconclusive") else "agrees" if c.answer == paper else "disagrees"
            tally[kind] += 1
            if kind == "inconclusive":
                inconclusive.append(f"{c.run} ({c.claim})")
            agree = f" ({kind})" if kind in ("agrees", "disagrees") else ""
            rows.append(f"| {c.claim} (paper: {paper}) | {c.run} | **{c.answer}**{agree} | {c.evidence} |")
    lines += [
        f"Answers: {tally['agrees']} agree with the paper, {tally['disagrees']} disagree, {tally['inconclusive']} "
        f"inconclusive{': ' + '; '.join(inconclusive) if inconclusive else ''}; {tally['n/a']} n/a (the run "
        "lacks the branches or the prefix the claim needs).",
        "",
        "| paper's claim (Song, Ahn & Yun 2025) | run | measured | evidence |",
        "|---|---|---|---|",
        *rows,
    ]
    lines += _table1_section(entries)
    lines += ["", "## Figures", ""]
    for e in entries:
        for fig in e.get("figures", []):
            lines.append(f"![{e['run']}: {Path(fig).stem}]({e['run']}/{fig})\n")
    lines += ["## Commands", ""]
    for e in entries:
        lines += [f"- `{e['run']}`: `{e['command']}`"]
    return "\n".join(lines) + "\n"


def _spread(values: Sequence[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    mean = sum(values) / len(values)
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{mean:.3f} ± {sd:.3f}"


def seed_summaries(summary: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The per-seed summaries of a stored ``summary.json``: the summary itself (the first seed), then those in its
    ``seed_summaries`` (other seeds of a multi-seed run)."""
    others = summary.get("seed_summaries") or {}
    return [summary, *(others[k] for k in sorted(others, key=int))]


def _table1_section(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """The paper's Table 1 from every run whose summary has effective-learning-rate curves before the switch."""
    rows = []
    for e in entries:
        row = effective_lr_table(e["summary"])
        # a mean of fewer than 3 single-step measurements is not a Table 1 entry (e.g. an early switch)
        if row is not None and row["measurements"] >= 3 and e["summary"].get("prefix_optimizer", "sgd") == "sgd":
            amp = row["bulk"] / row["dominant"] if row["dominant"] > 0 else None
            interval = amplification_interval(seed_summaries(e["summary"]))
            spread = "—" if interval is None else f"{interval[0]:.3g} [{interval[1]:.3g}, {interval[2]:.3g}]"
            rows.append(
                f"| {e['run']} | {row['optimizer']} | {row['learning_rate']} | {row['dominant']:.4g} | "
                f"{row['bulk']:.4g} | {format_value(amp, '.2f')} | {spread} | {row['measurements']} |"
            )
    if not rows:
        return []
    return [
        "",
        "## Effective learning rates (the paper's Table 1)",
        "",
        f"Mean effective learning rates of the unprojected prefix (seed 0) over its measurements before step "
        f"{TABLE1_STEPS} (or the switch): η_dom = −⟨Δθ, Pg⟩/‖Pg‖², η_bulk = −⟨Δθ, (I−P)g⟩/‖(I−P)g‖² (g the "
        "full-batch gradient, P the top-k projector; `hf_subspace/metrics.py`). For plain GD both equal the learning "
        "rate. The last ratio column is the claims' statistic: the per-seed median of the per-step η_bulk/η_dom, "
        "mean over the seeds and its 95 % interval.",
        "",
        "| run | optimizer | lr | mean η_dom | mean η_bulk | η_bulk/η_dom (means) | median per-step ratio, seeds "
        "[95 %] | steps |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]
