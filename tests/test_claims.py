"""The paper's claims (``hf_subspace.experiments.claims``): each rule says "no" to a constructed counter-example."""

from __future__ import annotations

import math
from typing import Any

import pytest

from hf_subspace.experiments.card_text import branch_card_section, stale_basis_note
from hf_subspace.experiments.cards import ReferenceRun
from hf_subspace.experiments.claims import (
    amplification_interval,
    evaluate_claims,
    optimizer_label,
    progress,
    second_half_slope,
)
from hf_subspace.experiments.diagnostics import (
    effective_lr_means,
    extra_figures,
    metric_curves,
    sharpness_summary,
    spectrum_gap,
)

SWITCH, END = 100, 300


def _branch(final_ratio: float, mode: str = "none", full_batch: bool = False, drift: float = 0.0, seed: int = 0,
            chi: float = 0.9, chi0: float | None = None) -> dict[str, Any]:  # fmt: skip
    """A branch whose loss falls geometrically from 1 at the switch to ``final_ratio`` at the end; ``drift`` adds a
    seed-dependent wiggle (so slopes have a spread)."""
    steps = list(range(SWITCH, END + 1, 10))
    rate = math.log(final_ratio) / (END - SWITCH)
    wiggle = [drift * math.sin(0.7 * s + seed) for s in steps]
    curve = [[s, math.exp(rate * (s - SWITCH) + w)] for s, w in zip(steps, wiggle)]
    curve[0][1] = 1.0
    curve[-1][1] = final_ratio
    return {
        "loss_at_switch": 1.0, "final_loss": final_ratio, "loss_curve": curve, "subspace_mode": mode,
        "full_batch": full_batch, "mean_chi_k": chi, "chi_k_at_switch": chi0 if chi0 is not None else chi,
        "chi_k_curve": [[s, chi] for s in steps],
    }  # fmt: skip


def _summary(runs: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"k": 10, "switch_step": SWITCH, "max_steps": END, "learning_rate": 0.01, "optimizer": "sgd",
            "prefix_optimizer": "sgd", "runs": runs, **extra}  # fmt: skip


def _answers(summaries: Any, baseline: Any = None) -> dict[str, str]:
    return {c.claim: c.answer for c in evaluate_claims("run", summaries, baseline=baseline)}


def _sgd_dom_bulk(dom: float, bulk: float, sgd: float = 0.5, seeds: int = 3) -> list[dict[str, Any]]:
    return [
        _summary(
            {
                "sgd": _branch(sgd, seed=s, drift=1e-3),
                "dominant": _branch(dom, "dominant", seed=s, drift=1e-3),
                "bulk": _branch(bulk, "bulk", seed=s, drift=1e-3),
            }
        )
        for s in range(seeds)
    ]


def test_progress_and_slope() -> None:
    b = _branch(0.5)
    assert progress(b) == pytest.approx(math.log(2))
    slope, stderr = second_half_slope(b, SWITCH, END)
    assert slope == pytest.approx(math.log(0.5) / (END - SWITCH), rel=1e-6) and stderr < 1e-9


def test_dom_rule_against_the_unprojected_twin() -> None:
    # the old rule's counter-example: Dom falls to 0.92 of its switch loss (called "stalls" by final/switch ≥ 0.9)
    # while SGD reaches 0.78: Dom made 34 % of SGD's progress, so it did not fail to train
    assert _answers(_sgd_dom_bulk(dom=0.92, bulk=0.78, sgd=0.78))["Dom-SGD fails to train"] == "no"
    # Dom-Adam with 27 % of Adam's progress: no
    adam = [{**s, "optimizer": "adamw_torch"} for s in _sgd_dom_bulk(dom=0.5**0.27, bulk=0.5)]
    assert _answers(adam)["Dom-Adam fails to train"] == "no"
    # a flat Dom branch (progress ≈ 0, slope within the seed spread of 0): yes
    flat = _sgd_dom_bulk(dom=1.0, bulk=0.5)
    for s, trend in zip(flat, (1e-5, -1e-5, 0.5e-5)):  # second-half slopes scattered around 0 across the seeds
        curve = [[t, math.exp(trend * (t - SWITCH))] for t in range(SWITCH, END + 1, 10)]
        s["runs"]["dominant"].update(loss_curve=curve, final_loss=curve[-1][1])
    assert _answers(flat)["Dom-SGD fails to train"] == "yes"
    # a Dom branch under 10 % of SGD's progress that still steadily descends in every seed: no (still learning)
    slow = _sgd_dom_bulk(dom=0.97, bulk=0.5, sgd=0.5)
    assert _answers(slow)["Dom-SGD fails to train"] == "no"
    # a Dom branch whose loss rises steadily (as on digits) does not train either
    rising = _sgd_dom_bulk(dom=1.02, bulk=0.5, sgd=0.5)
    assert _answers(rising)["Dom-SGD fails to train"] == "yes"


def test_bulk_rule_is_two_sided() -> None:
    assert _answers(_sgd_dom_bulk(dom=1.0, bulk=0.5))["Bulk-SGD is as effective as SGD"] == "yes"
    # Bulk made 4.3× SGD's progress (the SST-2 run near the edge of stability): a different regime, not "yes"
    assert _answers(_sgd_dom_bulk(dom=1.0, bulk=0.5**4.3))["Bulk-SGD is as effective as SGD"] == "different regime"
    assert _answers(_sgd_dom_bulk(dom=1.0, bulk=0.5**0.5))["Bulk-SGD is as effective as SGD"] == "no"


def test_seeds_that_disagree_are_inconclusive() -> None:
    seeds = _sgd_dom_bulk(dom=1.0, bulk=0.5)
    seeds[1]["runs"]["bulk"] = _branch(0.5**0.5, "bulk")
    answer = evaluate_claims("run", seeds)[1]
    assert answer.answer == "inconclusive" and "seeds disagree" in answer.evidence


def test_an_untrained_twin_cannot_answer() -> None:
    answers = _answers(_sgd_dom_bulk(dom=1.0, bulk=0.99, sgd=0.99))
    assert answers["Dom-SGD fails to train"] == answers["Bulk-SGD is as effective as SGD"] == "inconclusive"


def test_sgd_to_gd_needs_both_thresholds() -> None:
    def run(gd_chi: float, sgd_chi: float) -> str:
        s = _summary({"sgd": _branch(0.5, chi=sgd_chi), "gd": _branch(0.5, full_batch=True, chi=gd_chi)})
        return _answers([s])["SGD→GD loses the alignment"]

    assert run(0.0, 0.9) == "yes"
    assert run(0.4, 0.9) == "no"  # the old ratio rule (< 0.5 × SGD's) called this "yes"
    assert run(0.0, 0.5) == "inconclusive"  # SGD itself is not aligned
    s = _summary({"sgd": _branch(0.5, chi=0.5), "gd": _branch(0.5, full_batch=True, chi=0.0)})
    (claim,) = [c for c in evaluate_claims("run", [s]) if c.claim == "SGD→GD loses the alignment"]
    assert "SGD itself is not aligned (mean χ_k < 0.7) in 1 seed(s)" in claim.evidence


def test_gd_to_sgd_must_climb_from_low_to_high() -> None:
    def run(chi0: float, chi: float) -> str:
        s = _summary({"sgd": _branch(0.5, chi=chi, chi0=chi0)}, prefix_optimizer="gd")
        return _answers([s])["GD→SGD restores the alignment"]

    assert run(0.0, 0.9) == "yes"
    assert run(0.0, 0.2) == "no"  # the old rule passed any χ_k > 0 after a χ_k of 0 at the switch
    assert run(0.5, 0.9) == "inconclusive"  # the GD prefix had not lost the alignment
    s = _summary({"sgd": _branch(0.5, chi=0.9, chi0=0.5)}, prefix_optimizer="gd")
    (claim,) = [c for c in evaluate_claims("run", [s]) if c.claim == "GD→SGD restores the alignment"]
    assert "nothing to restore: GD kept χ_k above 0.3 in 1 seed(s)" in claim.evidence


def _sharpness(branch: dict[str, Any], values: list[tuple[int, float]]) -> dict[str, Any]:
    return {**branch, "curves": {"eigenvalue_top_01": [[s, v] for s, v in values]}}


def test_sgd_gd_verdicts_at_the_edge_of_stability_are_flagged_not_changed() -> None:
    # lr 0.01: 2/η = 200; the flag's line is η·λ₁ = 1.8, i.e. λ₁ = 180. Step 0 (the initialisation) is sharp in every
    # case and never counts; the part the flag does not read (the prefix of an SGD→GD run, the branches after a GD
    # prefix) is sharp too, so reading the wrong part flags the calm cases.
    def evidence(gd_lambda: float, prefix: bool) -> tuple[str, str]:
        if prefix:  # GD→SGD: the GD prefix is the first branch's curve up to the switch
            lam = [(0, 500.0), (SWITCH // 2, gd_lambda), (SWITCH, gd_lambda), (SWITCH + 10, 500.0)]
            runs = {
                "sgd": _sharpness(_branch(0.5, chi=0.9, chi0=0.0), lam),
                "gd": _sharpness(_branch(0.5, full_batch=True, chi=0.0, chi0=0.0), [(SWITCH + 10, 500.0)]),
            }
            summary = _summary(runs, prefix_optimizer="gd")
            wanted = "GD→SGD restores the alignment"
        else:  # SGD→GD: the GD branch after the switch
            gd = _sharpness(_branch(0.5, full_batch=True, chi=0.0), [(0, 500.0), (SWITCH // 2, 500.0),
                                                                       (SWITCH + 10, gd_lambda)])  # fmt: skip
            summary = _summary({"sgd": _sharpness(_branch(0.5, chi=0.9), [(SWITCH + 10, 500.0)]), "gd": gd})
            wanted = "SGD→GD loses the alignment"
        (c,) = [c for c in evaluate_claims("run", [summary]) if c.claim == wanted]
        return c.answer, c.evidence

    for prefix in (False, True):
        answer, text = evidence(190.0, prefix)
        assert answer == "yes" and "flagged: the GD " in text and "1.90 ≥ 1.8" in text
        answer, text = evidence(100.0, prefix)  # η·λ₁ = 1.0 in the part that counts
        assert answer == "yes" and "flagged" not in text


def _with_lrs(ratio: float, seed: int, optimizer: str = "sgd", optim_args: str = "") -> dict[str, Any]:
    dom = [[s, 0.01] for s in range(0, SWITCH)]
    bulk = [[s, 0.01 * ratio * (1 + 0.05 * math.sin(s + seed))] for s in range(0, SWITCH)]
    run = {**_branch(0.5), "curves": {"effective_lr_dominant": dom, "effective_lr_bulk": bulk}}
    return _summary({"sgd": run}, optimizer=optimizer, optim_args=optim_args)


def test_amplification_needs_an_interval_above_sgds() -> None:
    sgd = [_with_lrs(1.37 + 0.05 * s, s) for s in range(3)]
    mom = [_with_lrs(10.0 + 0.5 * s, s, optim_args="momentum=0.9") for s in range(3)]
    weak = [_with_lrs(1.3 + 0.3 * s, s, optim_args="momentum=0.9") for s in range(3)]  # overlaps SGD's interval
    claim = "momentum amplifies the bulk effective LR over the dominant one"
    assert _answers(mom, baseline=sgd)[claim] == "yes"
    assert _answers(weak, baseline=sgd)[claim] == "no"
    assert _answers(mom[:1], baseline=sgd)[claim] == "inconclusive"  # one seed has no interval
    mean, low, high, n = amplification_interval(sgd)
    assert low < mean < high and n == 3


def test_fixed_refresh_interval_is_flagged_on_the_card() -> None:
    """A reference-run command with a fixed refresh interval > 1 and no subspace_basis_tol gets a warning."""
    runs = {"sgd": _branch(0.5), "dominant": _branch(1.0, "dominant")}
    stale = _summary(runs, refresh_steps=50, basis_tol=None)
    run = ReferenceRun("r", "mlp_mnist", ("--subspace_refresh_steps", "50"), (), "d", ())
    record = {"machine": {"cpu": "c", "cores": 2, "torch_threads": 1, "platform": "p"}, "date": "d",
              "command": "c", "wall_time_s": 1.0}  # fmt: skip
    assert "Stale basis" in branch_card_section(run, "dominant", stale, record, [])
    assert stale_basis_note(_summary(runs, refresh_steps=1, basis_tol=None)) is None
    assert stale_basis_note(_summary(runs, refresh_steps=200, basis_tol=0.05)) is None
    assert "Stale basis" not in branch_card_section(run, "dominant", _summary(runs, refresh_steps=1), record, [])


# ----------------------------------------------------------------------------------------------- diagnostics and claims on synthetic summaries


def test_metric_curves_merge_prefix_and_branch():
    prefix = [{"step": 0, "subspace/eigenvalue_top_01": 5.0, "subspace/full_train_loss": 1.0},
              {"step": 10, "subspace/eigenvalue_top_01": 6.0, "subspace/effective_lr_bulk": 0.1},
              {"step": 20, "subspace/eigenvalue_top_01": 99.0}]  # fmt: skip
    branch = [{"step": 20, "subspace/eigenvalue_top_01": 7.0, "subspace/effective_lr_bulk": float("nan")},
              {"step": 30, "subspace/eigenvalue_next_02": 1.0, "loss": 3.0}]  # fmt: skip
    curves = metric_curves(prefix, branch, 20)
    assert curves == {
        "eigenvalue_top_01": [[0, 5.0], [10, 6.0], [20, 7.0]],
        "effective_lr_bulk": [[10, 0.1]],
        "eigenvalue_next_02": [[30, 1.0]],
    }


def _synthetic(**runs):
    return {"k": 2, "switch_step": 10, "learning_rate": 0.1, "optimizer": "sgd", "runs": runs}


def test_claims_from_synthetic_summaries(tmp_path):
    # edge of stability: λ₁ reaches 2/η = 20; GD and Bulk-GD halve the loss, Dom-GD does not
    lam = [[0, 10.0], [5, 19.5], [10, 20.5], [20, 20.1]]

    def branch(losses, mode="none"):  # loss at steps 10 (switch), 12, ..., 20 (end)
        curve = [[10 + 2 * i, v] for i, v in enumerate(losses)]
        return {"loss_at_switch": losses[0], "final_loss": losses[-1], "loss_curve": curve, "subspace_mode": mode,
                "full_batch": True, "curves": {"eigenvalue_top_01": lam}}  # fmt: skip

    # Dom-GD stays flat: judged against GD (progress ≤ 0.1 × GD's, second-half slope within the spread of 0)
    runs = {"gd": branch([1.0, 0.9, 0.8, 0.7, 0.6, 0.5]),
            "dominant-gd": branch([1.0, 1.0, 0.999, 1.001, 0.999, 1.0], "dominant"),
            "bulk-gd": branch([1.0, 0.9, 0.8, 0.7, 0.6, 0.55], "bulk")}  # fmt: skip
    eos = {**_synthetic(**runs), "prefix_optimizer": "gd", "max_steps": 20}
    answers = {c.claim: c.answer for c in evaluate_claims("eos", eos)}
    assert answers["GD reaches the edge of stability (λ₁ ≈ 2/η)"] == "yes"
    assert answers["Dom-GD fails to train at the edge of stability"] == "yes"
    # a one-time drop, then flat: 51 % of GD's progress (the old half-branch rule called this a failure): no
    eos["runs"]["dominant-gd"] = branch([1.0, 0.7, 0.7, 0.7, 0.7, 0.7], "dominant")
    dom = {c.claim: c.answer for c in evaluate_claims("eos", eos)}["Dom-GD fails to train at the edge of stability"]
    assert dom == "no"
    assert answers["Bulk-GD is as effective as GD at the edge of stability"] == "yes"
    assert sharpness_summary(eos)["first_step_90"] == 5
    lower = {**eos, "learning_rate": 0.01}  # 2/η = 200: far from the edge
    assert {c.claim: c.answer for c in evaluate_claims("eos", lower)}[
        "GD reaches the edge of stability (λ₁ ≈ 2/η)"
    ] == "no"
    # spectrum gap: λ_2 / λ_3 = 4 and 2 at the two measurements
    gap = {"eigenvalue_top_02": [[0, 8.0], [10, 4.0]], "eigenvalue_next_03": [[0, 2.0], [10, 2.0]]}
    s = _synthetic(sgd={"loss_at_switch": 1.0, "final_loss": 0.5, "curves": gap})
    g = spectrum_gap(s["runs"]["sgd"])
    assert (g["ratio"], g["min_ratio"], g["measurements"]) == (3.0, 2.0, 2)
    assert "the top-k eigenvalues separate from the rest (spectrum gap)" in {
        c.claim for c in evaluate_claims("s", s) if c.answer == "yes"
    }
    # Table 1: mean effective learning rates before the switch (step 10), momentum amplifies the bulk
    lrs = {"effective_lr_dominant": [[0, 0.01], [5, 0.03], [10, 9.0]], "effective_lr_bulk": [[0, 0.1], [5, 0.3]]}
    mom = {**_synthetic(sgd={"loss_at_switch": 1.0, "final_loss": 0.5, "curves": lrs}), "optim_args": "momentum=0.9"}
    assert effective_lr_means(mom["runs"]["sgd"], 10) == pytest.approx({"dominant": 0.02, "bulk": 0.2,
                                                                        "measurements": 2})  # fmt: skip
    row = [c for c in evaluate_claims("m", mom) if "amplifies" in c.claim]
    # one seed and no SGD baseline: no interval to compare (tests/test_claims.py has the multi-seed rule)
    assert len(row) == 1 and row[0].claim.startswith("momentum") and row[0].answer == "inconclusive"
    assert not [c for c in evaluate_claims("sgd", _synthetic(sgd={"curves": lrs})) if "amplifies" in c.claim]
    # the figures the data supports
    written = {p.name for p in extra_figures(eos, tmp_path)} | {p.name for p in extra_figures(s, tmp_path)}
    assert written == {"sharpness.png", "spectrum.png"}


@pytest.mark.parametrize(
    ("summary", "label"),
    [
        ({"optimizer": "sgd", "optim_args": None}, "SGD"),
        ({"optimizer": "sgd", "optim_args": "momentum=0.9,nesterov=True"}, "momentum"),
        ({"optimizer": "sgd", "optim_args": "momentum=0"}, "SGD"),
        ({"optimizer": "adamw_torch"}, "Adam"),
        ({"optimizer": "sgd", "sam_rho": 0.05}, "SAM"),
        ({"optimizer": "adamw_torch", "sam_rho": 0.05}, "SAM-Adam"),
    ],
)
def test_optimizer_label(summary, label):
    assert optimizer_label(summary) == label


def test_sharpness_figure_only_when_the_sharpness_changes(tmp_path):
    """A full-batch run of a quadratic has a constant λ₁ (a flat line: no figure); one whose λ₁ moves gets it."""
    flat = {"runs": {"gd": {"full_batch": True, "curves": {"eigenvalue_top_01": [[0, 1000.0], [10, 1000.0]]}}}}
    assert extra_figures(flat, tmp_path) == []
    flat["runs"]["gd"]["curves"]["eigenvalue_top_01"][1][1] = 1500.0
    assert [p.name for p in extra_figures(flat, tmp_path)] == ["sharpness.png"]
