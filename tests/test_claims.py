"""The paper's claims answered from summaries (:mod:`hf_subspace.experiments.claims`) and the curves they read
(:mod:`hf_subspace.experiments.diagnostics`), on synthetic summaries."""

from __future__ import annotations

import pytest

from hf_subspace.experiments.claims import (
    AMPLIFICATION_RATIO,
    evaluate_claims,
    optimizer_label,
)
from hf_subspace.experiments.diagnostics import (
    effective_lr_means,
    extra_figures,
    metric_curves,
    sharpness_summary,
    spectrum_gap,
)


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


def _summary(**runs):
    return {"k": 2, "switch_step": 10, "learning_rate": 0.1, "optimizer": "sgd", "runs": runs}


def test_claims_from_synthetic_summaries(tmp_path):
    # edge of stability: λ₁ reaches 2/η = 20; GD and Bulk-GD halve the loss, Dom-GD does not
    lam = [[0, 10.0], [5, 19.5], [10, 20.5], [20, 20.1]]

    def branch(losses):  # loss at steps 10 (switch), 15 (mid-branch), 20 (end)
        curve = [[10, losses[0]], [15, losses[1]], [20, losses[2]]]
        return {"loss_at_switch": losses[0], "final_loss": losses[2], "loss_curve": curve,
                "curves": {"eigenvalue_top_01": lam}}  # fmt: skip

    # Dom-GD: a one-time drop (damping the EoS oscillation), then flat; the stall is judged on the second half
    runs = {"gd": branch([1.0, 0.8, 0.5]), "dominant-gd": branch([1.0, 0.7, 0.7]), "bulk-gd": branch([1.0, 0.8, 0.55])}
    eos = {**_summary(**runs), "prefix_optimizer": "gd", "max_steps": 20}
    answers = {c.claim: c.answer for c in evaluate_claims("eos", eos)}
    assert answers["GD reaches the edge of stability (λ₁ ≈ 2/η)"] == "yes"
    assert answers["Dom-GD fails at the edge of stability"] == "yes"
    eos["runs"]["dominant-gd"] = branch([1.0, 0.7, 0.5])  # keeps decreasing in the second half: it does not fail
    assert {c.claim: c.answer for c in evaluate_claims("eos", eos)}["Dom-GD fails at the edge of stability"] == "no"
    eos["runs"]["dominant-gd"] = branch([1.0, 0.7, 0.7])
    assert answers["Bulk-GD is as effective as GD at the edge of stability"] == "yes"
    assert sharpness_summary(eos)["first_step_90"] == 5
    lower = {**eos, "learning_rate": 0.01}  # 2/η = 200: far from the edge
    assert {c.claim: c.answer for c in evaluate_claims("eos", lower)}[
        "GD reaches the edge of stability (λ₁ ≈ 2/η)"
    ] == "no"
    # spectrum gap: λ_2 / λ_3 = 4 and 2 at the two measurements
    gap = {"eigenvalue_top_02": [[0, 8.0], [10, 4.0]], "eigenvalue_next_03": [[0, 2.0], [10, 2.0]]}
    s = _summary(sgd={"loss_at_switch": 1.0, "final_loss": 0.5, "curves": gap})
    g = spectrum_gap(s["runs"]["sgd"])
    assert (g["ratio"], g["min_ratio"], g["measurements"]) == (3.0, 2.0, 2)
    assert "the top-k eigenvalues separate from the rest (spectrum gap)" in {
        c.claim for c in evaluate_claims("s", s) if c.answer == "yes"
    }
    # Table 1: mean effective learning rates before the switch (step 10), momentum amplifies the bulk
    lrs = {"effective_lr_dominant": [[0, 0.01], [5, 0.03], [10, 9.0]], "effective_lr_bulk": [[0, 0.1], [5, 0.3]]}
    mom = {**_summary(sgd={"loss_at_switch": 1.0, "final_loss": 0.5, "curves": lrs}), "optim_args": "momentum=0.9"}
    assert effective_lr_means(mom["runs"]["sgd"], 10) == pytest.approx({"dominant": 0.02, "bulk": 0.2,
                                                                        "measurements": 2})  # fmt: skip
    row = [c for c in evaluate_claims("m", mom) if "amplifies" in c.claim]
    assert len(row) == 1 and row[0].claim.startswith("momentum") and row[0].answer == "yes"
    assert AMPLIFICATION_RATIO <= 0.2 / 0.02
    assert not [c for c in evaluate_claims("sgd", _summary(sgd={"curves": lrs})) if "amplifies" in c.claim]
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
