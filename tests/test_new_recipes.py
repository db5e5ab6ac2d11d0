"""The recipes of the paper's other experiments (issue 13), each a handful of steps on a slice of the shipped data:
the CNN and a ``transformers`` ViT on CIFAR-10, ``finetune`` of a saved image classifier, the edge of stability
(GD prefix, GD/Dom-GD/Bulk-GD), momentum/Adam/SAM branches; plus the claims and figures computed from them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_subspace.experiments.claims import (
    effective_lr_table,
    evaluate_claims,
    optimizer_label,
    paper_answer,
)
from hf_subspace.experiments.diagnostics import (
    effective_lr_means,
    extra_figures,
    metric_curves,
    sharpness_summary,
    spectrum_gap,
)
from hf_subspace.experiments.recipes import parse_recipe_arguments, run_recipe

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR = SHARED_DATA / "cifar10"
MNIST = SHARED_DATA / "mnist"
needs_cifar = pytest.mark.skipif(
    not (CIFAR / "train.npz").is_file(), reason=f"shipped CIFAR-10 not found at {CIFAR} (../shared/data/cifar10)"
)
needs_mnist = pytest.mark.skipif(
    not (MNIST / "train.npz").is_file(), reason=f"shipped MNIST not found at {MNIST} (../shared/data/mnist)"
)
QUIET = ["--disable_tqdm", "true", "--report_to", "none"]
FEW = ["--max_steps", "6", "--switch_step", "3", "--subspace_alignment_steps", "3", "--subspace_refresh_steps", "3"]


def run(recipe: str, argv: list[str]):
    recipe_args, training_args = parse_recipe_arguments(recipe, [*argv, *QUIET])
    return run_recipe(recipe, recipe_args, training_args, print_table=False)


def prefix_losses(out: Path, switch: int) -> dict[int, float]:
    state = json.loads((out / "prefix" / f"checkpoint-{switch}" / "trainer_state.json").read_text())
    return {e["step"]: e["subspace/full_train_loss"] for e in state["log_history"] if "subspace/full_train_loss" in e}


def cifar_slice(n_train: int = 60, n_val: int = 20) -> list[str]:
    return ["--train_file", str(CIFAR / "train.npz"), "--validation_file", str(CIFAR / "test.npz"),
            "--num_train", str(n_train), "--num_validation", str(n_val)]  # fmt: skip


def mnist_slice(n_train: int = 100) -> list[str]:
    return ["--train_file", str(MNIST / "train.npz"), "--num_train", str(n_train), "--num_validation", "20",
            "--hidden_sizes", "16,16", "--per_device_train_batch_size", "20"]  # fmt: skip


# ----------------------------------------------------------------------------------------------- CIFAR-10


@needs_cifar
@pytest.mark.filterwarnings("ignore:.* did not converge")  # capped on purpose: the pipeline is under test
def test_cnn_cifar10_on_shipped_slice(tmp_path):
    out = tmp_path / "cnn"
    # a few solver iterations: this checks the pipeline on real CIFAR-10 files, not the eigensolver
    result = run("cnn_cifar10", [*cifar_slice(40, 20), *FEW, "--per_device_train_batch_size", "20",
                                 "--subspace_k", "2", "--subspace_solver_max_iters", "6",
                                 "--output_dir", str(out)])  # fmt: skip
    s = result.summary
    assert (s["num_train"], s["num_validation"], s["image_shape"]) == (40, 20, [3, 32, 32])
    assert set(s["runs"]) == {"sgd", "dominant", "bulk"}
    # every branch starts from the prefix's state: same loss at the switch as the prefix measured there
    at_switch = prefix_losses(out, 3)[3]
    for branch in s["runs"].values():
        assert branch["loss_at_switch"] == pytest.approx(at_switch, rel=1e-5)
        assert math.isfinite(branch["final_loss"]) and 0.0 <= branch["eval_accuracy"] <= 1.0
    assert s["runs"]["sgd"]["curves"]["eigenvalue_top_01"]  # λ₁ along training is in the summary


@needs_cifar
def test_vit_cifar10_is_a_transformers_model_and_resumes_the_prefix_weights(tmp_path):
    from transformers import AutoImageProcessor, AutoModelForImageClassification, ViTForImageClassification

    from hf_subspace import cli

    out = tmp_path / "vit"
    result = run("vit_cifar10", [*cifar_slice(), *FEW, "--hidden_sizes", "16,1", "--subspace_k", "2",
                                 "--per_device_train_batch_size", "20", "--subspace_extra_eigenvalues", "2",
                                 "--modes", "sgd,bulk", "--output_dir", str(out)])  # fmt: skip
    s = result.summary
    assert s["vit"] == {"hidden_size": 16, "num_hidden_layers": 1, "patch_size": 8}
    assert s["hessian_num_samples"] == 60  # the whole training slice
    # The saved ViT's weights are renamed on disk (transformers 5 conversion mapping): a plain load_state_dict
    # resume would restart the branches from the initial weights and this loss would differ.
    at_switch = prefix_losses(out, 3)[3]
    for branch in s["runs"].values():
        assert branch["loss_at_switch"] == pytest.approx(at_switch, rel=1e-5)
    model = AutoModelForImageClassification.from_pretrained(out / "bulk")
    assert isinstance(model, ViTForImageClassification) and model.config.num_labels == 10
    processor = AutoImageProcessor.from_pretrained(out / "bulk")
    assert processor.do_resize is False and processor.image_mean[0] == pytest.approx(0.49, abs=0.05)
    x = np.load(CIFAR / "test.npz")["x"][:2]  # uint8 [2, 32, 32, 3], as a user would pass them
    pixels = processor(images=list(x), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (2, 3, 32, 32)
    assert model(pixel_values=pixels).logits.shape == (2, 10)
    # `hf-subspace spectrum` on the saved branch: same data (the 60 images), same loss, same parameters as the
    # branch's final measurement, so the same top eigenvalues
    spec = tmp_path / "spectrum"
    assert cli.main(["spectrum", str(out / "bulk"), "--k", "2", "--num_samples", "60", "--output_dir", str(spec)]) == 0
    values = json.loads((spec / "spectrum.json").read_text())["eigenvalues"]
    curves = s["runs"]["bulk"]["curves"]
    final = [curves[n][-1] for n in ("eigenvalue_top_01", "eigenvalue_top_02", "eigenvalue_next_03")]
    assert all(step == 6 for step, _ in final)
    assert values[:3] == pytest.approx([v for _, v in final], rel=2e-3, abs=1e-4)
    assert (spec / "spectrum.png").is_file()


@needs_cifar
def test_finetune_a_saved_image_classifier_offline(tmp_path):
    from transformers import AutoModelForImageClassification, ViTConfig, ViTForImageClassification, ViTImageProcessor

    ckpt = tmp_path / "tiny-vit"
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, num_labels=3)  # fmt: skip
    torch.manual_seed(0)
    ViTForImageClassification(config).save_pretrained(ckpt)
    ViTImageProcessor(do_resize=False).save_pretrained(ckpt)
    out = tmp_path / "ft"
    result = run("finetune", [*cifar_slice(40, 10), *FEW, "--model_name_or_path", str(ckpt), "--subspace_k", "2",
                              "--per_device_train_batch_size", "10", "--hessian_batch_size", "20",
                              "--modes", "sgd,dominant", "--output_dir", str(out)])  # fmt: skip
    s = result.summary
    assert s["task"] == "image" and s["model_name_or_path"] == str(ckpt)
    at_switch = prefix_losses(out, 3)[3]
    assert s["runs"]["dominant"]["loss_at_switch"] == pytest.approx(at_switch, rel=1e-5)
    model = AutoModelForImageClassification.from_pretrained(out / "dominant")
    assert model.config.num_labels == 10  # the head was resized to CIFAR-10's classes


# ----------------------------------------------------------------------------------------------- MNIST: EoS, optimizers


@needs_mnist
def test_edge_of_stability_branches_and_sharpness_figure(tmp_path):
    out = tmp_path / "eos"
    result = run("mlp_mnist", [*mnist_slice(), *FEW, "--prefix", "gd", "--modes", "gd,dominant-gd,bulk-gd",
                               "--learning_rate", "0.05", "--subspace_k", "3", "--output_dir", str(out)])  # fmt: skip
    s = result.summary
    assert s["prefix_optimizer"] == "gd" and s["prefix_per_device_train_batch_size"] == 100
    assert (out / "sharpness.png").is_file()
    sharp = sharpness_summary(s)
    assert sharp["two_over_lr"] == pytest.approx(40.0) and sharp["max_prefix"] > 0
    claims = {c.claim: c for c in evaluate_claims("eos", s)}
    for text in ("GD reaches the edge of stability (λ₁ ≈ 2/η)", "Dom-GD fails to train at the edge of stability",
                 "Bulk-GD is as effective as GD at the edge of stability"):  # fmt: skip
        assert claims[text].answer in ("yes", "no", "different regime", "inconclusive") and paper_answer(text) == "yes"
    assert s["runs"]["dominant-gd"]["curves"]["eigenvalue_top_01"]


@needs_mnist
@pytest.mark.parametrize(
    ("options", "label"),
    [
        (["--optim_args", "momentum=0.9"], "momentum"),
        (["--optim", "adamw_torch", "--learning_rate", "0.001"], "Adam"),
        (["--sam_rho", "0.05"], "SAM"),
    ],
)
def test_optimizer_variants_dom_and_bulk(tmp_path, options, label):
    out = tmp_path / label
    result = run("mlp_mnist", [*mnist_slice(), *FEW, "--subspace_k", "3", *options, "--output_dir", str(out)])
    s = result.summary
    assert optimizer_label(s) == label
    assert len(s["runs"]) == 3 and {"dominant", "bulk"} < set(s["runs"])  # the unprojected one: named by optimizer
    at_switch = prefix_losses(out, 3)[3]
    for branch in s["runs"].values():
        assert branch["loss_at_switch"] == pytest.approx(at_switch, rel=1e-5)
    row = effective_lr_table(s)
    assert row is not None and row["optimizer"] == label and row["measurements"] == 1  # step 0 of the prefix
    texts = [c.claim for c in evaluate_claims(label, s)]
    assert f"Dom-{label} fails to train" in texts and f"Bulk-{label} is as effective as {label}" in texts
    amplification = f"{label} amplifies the bulk effective LR over the dominant one"
    assert (amplification in texts) == (label != "SAM")  # Table 1's claim is about momentum and Adam


@needs_mnist
def test_spectrum_curves_with_extra_eigenvalues(tmp_path):
    out = tmp_path / "spec"
    result = run("mlp_mnist", [*mnist_slice(), *FEW, "--subspace_k", "3", "--subspace_extra_eigenvalues", "3",
                               "--modes", "sgd", "--output_dir", str(out)])  # fmt: skip
    curves = result.summary["runs"]["sgd"]["curves"]
    assert {"eigenvalue_top_03", "eigenvalue_next_04", "eigenvalue_next_06"} <= set(curves)
    for step, value in curves["eigenvalue_top_03"]:
        nxt = dict(map(tuple, curves["eigenvalue_next_04"]))[step]
        assert value >= nxt - 1e-6  # descending: λ_3 ≥ λ_4 at every measurement
    assert (out / "spectrum.png").is_file()
    assert spectrum_gap(result.summary["runs"]["sgd"])["measurements"] == len(curves["eigenvalue_top_03"])


# ----------------------------------------------------------------------------------------------- pure functions


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

    def branch(losses, mode="none"):  # loss at steps 10 (switch), 12, ..., 20 (end)
        curve = [[10 + 2 * i, v] for i, v in enumerate(losses)]
        return {"loss_at_switch": losses[0], "final_loss": losses[-1], "loss_curve": curve, "subspace_mode": mode,
                "full_batch": True, "curves": {"eigenvalue_top_01": lam}}  # fmt: skip

    # Dom-GD stays flat: judged against GD (progress ≤ 0.1 × GD's, second-half slope within the spread of 0)
    runs = {"gd": branch([1.0, 0.9, 0.8, 0.7, 0.6, 0.5]),
            "dominant-gd": branch([1.0, 1.0, 0.999, 1.001, 0.999, 1.0], "dominant"),
            "bulk-gd": branch([1.0, 0.9, 0.8, 0.7, 0.6, 0.55], "bulk")}  # fmt: skip
    eos = {**_summary(**runs), "prefix_optimizer": "gd", "max_steps": 20}
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
    # one seed and no SGD baseline: no interval to compare (tests/test_claims.py has the multi-seed rule)
    assert len(row) == 1 and row[0].claim.startswith("momentum") and row[0].answer == "inconclusive"
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


def test_reference_runs_of_the_paper_extras_parse():
    """The cards' commands (model_cards/regenerate.py) are valid recipe options, full and quick, and their data
    exists in the shipped folder."""
    import runpy

    regen = runpy.run_path(str(Path(__file__).resolve().parents[1] / "model_cards" / "regenerate.py"))
    runs = {r.name: r for r in regen["PAPER_EXTRA_RUNS"]}
    expected = {
        "mlp_mnist_eos",
        "mlp_mnist_sgd",
        "mlp_mnist_momentum",
        "mlp_mnist_adam",
        "mlp_mnist_adam_lr1e-4",
        "mlp_mnist_sam",
        "vit_cifar10",
    }
    assert set(runs) == expected and set(runs) <= {r.name for r in regen["REFERENCE_RUNS"]}
    for run_ in runs.values():
        for quick in (False, True):
            ra, ta = parse_recipe_arguments(run_.recipe, run_.argv(SHARED_DATA, Path("out"), quick))
            assert ra.switch_step < ta.max_steps and ta.report_to in ([], ["none"], "none")
        if SHARED_DATA.is_dir():
            assert all((SHARED_DATA / n).is_file() for n in run_.needs)
    ra, ta = parse_recipe_arguments("mlp_mnist", runs["mlp_mnist_eos"].argv(SHARED_DATA, Path("out")))
    assert (ra.prefix, ra.modes, ta.learning_rate) == ("gd", "gd,dominant-gd,bulk-gd", 0.05)
