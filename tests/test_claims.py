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
    progress,
    second_half_slope,
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


def test_gd_to_sgd_must_climb_from_low_to_high() -> None:
    def run(chi0: float, chi: float) -> str:
        s = _summary({"sgd": _branch(0.5, chi=chi, chi0=chi0)}, prefix_optimizer="gd")
        return _answers([s])["GD→SGD restores the alignment"]

    assert run(0.0, 0.9) == "yes"
    assert run(0.0, 0.2) == "no"  # the old rule passed any χ_k > 0 after a χ_k of 0 at the switch
    assert run(0.5, 0.9) == "inconclusive"  # the GD prefix had not lost the alignment


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
