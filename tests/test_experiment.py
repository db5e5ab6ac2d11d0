"""The paper's protocol (`hf_subspace.experiments.experiment`) on the toy valley: outputs, result direction, validation."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from hf_subspace.experiments.arguments import ExperimentPlan, PreparedRecipe, RecipeArguments
from hf_subspace.experiments.branches import (
    BranchProgress,
    branch_name,
    default_alignment_steps,
    format_results_table,
    optimizer_label,
)
from hf_subspace.experiments.claims import evaluate_claims
from hf_subspace.experiments.experiment import hessian_subset, run_experiment
from hf_subspace.experiments.settings import (
    ExperimentError,
    check_resumed_options,
    parse_modes,
    resumed_options,
)
from hf_subspace.models.toy import ToyQuadraticConfig, ToyQuadraticModel, toy_quadratic_dataset
from hf_subspace.tensor_dataset import TensorDataset, to_tensor_dataset
from hf_subspace.trainer import SubspaceTrainer
from hf_subspace.training_args import SubspaceTrainingArguments

MODES = ["sgd", "gd", "dominant", "bulk"]


def toy_args(output_dir: Path, **overrides) -> SubspaceTrainingArguments:
    settings = {
        "max_steps": 300,
        "per_device_train_batch_size": 1,
        "learning_rate": 1e-3,
        "optim": "sgd",
        "lr_scheduler_type": "constant",
        "max_grad_norm": 0.0,
        "subspace_k": 1,
        "subspace_refresh_steps": 25,
        "subspace_alignment_steps": 25,
        "logging_steps": 50,
        "report_to": ["tensorboard"],
        "save_strategy": "no",
        "use_cpu": True,
        "disable_tqdm": True,
        "dataloader_pin_memory": False,
        "seed": 0,
    }
    settings.update(overrides)
    return SubspaceTrainingArguments(output_dir=str(output_dir), **settings)


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "experiment"
    # Leftovers: an earlier result (replaced with --overwrite_output_dir) and a foreign file (kept).
    (out / "dominant").mkdir(parents=True)
    (out / "dominant" / "stale.txt").write_text("old")
    (out / "notes.txt").write_text("mine")
    result = run_experiment(
        PreparedRecipe(
            ToyQuadraticModel(ToyQuadraticConfig()),
            toy_quadratic_dataset(50),
            record_trajectory=True,
            extras={"note": "test"},
        ),
        toy_args(out),
        ExperimentPlan(switch_step=50, modes=MODES, recipe="toy_quadratic", overwrite_output_dir=True),
    )
    return out, result


def test_summary_json_format(toy_run):
    out, result = toy_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads(json.dumps(result.summary))
    assert summary["recipe"] == "toy_quadratic" and summary["k"] == 1 and summary["switch_step"] == 50
    assert list(summary["runs"]) == MODES
    assert summary["world_size"] == 1 and summary["note"] == "test"
    for mode, run in summary["runs"].items():
        for key in ("loss_at_switch", "final_loss", "mean_chi_k", "wall_time_s"):
            assert isinstance(run[key], float), (mode, key)
        for key in ("loss_curve", "chi_k_curve"):
            curve = run[key]
            assert all(len(point) == 2 for point in curve)
            steps = [s for s, _ in curve]
            assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] == 300
        assert run["final_loss"] == run["loss_curve"][-1][1]
        assert [50, run["loss_at_switch"]] in run["loss_curve"]
    # every branch starts from the same state
    assert len({run["loss_at_switch"] for run in summary["runs"].values()}) == 1
    assert "sgd" in result.table() and "final/switch" in result.table()


def test_figure_cards_and_event_files(toy_run):
    out, result = toy_run
    assert result.figure_path == out / "figure.png" and result.figure_path.stat().st_size > 10_000
    assert (out / "prefix" / "checkpoint-50" / "subspace_state.pt").is_file()
    for mode in MODES:
        card = (out / mode / "README.md").read_text()
        assert "hf-subspace" in card.split("---")[1]  # a tag in the YAML header
        assert (out / mode / "model.safetensors").is_file()
        events = list((out / mode).glob("events.out.tfevents.*"))  # the TensorBoard run is named by the branch
        assert events and len({e.name.split(".")[-2] for e in events}) == 1  # one writing process
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "dominant" / "stale.txt").exists()


def test_toy_shows_the_paper_result(toy_run):
    runs = toy_run[1].summary["runs"]
    dom, bulk, sgd, gd = runs["dominant"], runs["bulk"], runs["sgd"], runs["gd"]
    assert dom["final_loss"] >= 0.9 * dom["loss_at_switch"]  # Dom-SGD stalls
    assert bulk["final_loss"] <= 1.5 * sgd["final_loss"]  # Bulk-SGD trains like SGD ...
    assert bulk["final_loss"] < 0.8 * bulk["loss_at_switch"]  # ... and makes progress
    assert sgd["mean_chi_k"] > 0.9  # SGD's gradient sits in the sharp direction
    assert gd["mean_chi_k"] < 0.05  # GD's does not


def test_trajectories(toy_run):
    traj = toy_run[1].trajectories
    assert set(traj) == {"prefix", *MODES}
    assert traj["prefix"][0][0] == 0 and traj["prefix"][-1][0] == 50
    for mode in MODES:
        assert traj[mode][0][1:] == traj["prefix"][-1][1:]  # branches start where the prefix ends
        assert traj[mode][-1][0] == 300
    dom = torch.tensor([p[1:] for p in traj["dominant"]])
    assert torch.allclose(dom[:, 1], dom[0, 1])  # Dom-SGD never moves along the valley (y)


def test_branch_continues_the_uninterrupted_run(toy_run, tmp_path):
    """The sgd branch resumes the prefix checkpoint: same parameters as one uninterrupted run (same data order)."""
    out, _ = toy_run
    data = toy_quadratic_dataset(50)
    trainer = SubspaceTrainer(
        model=ToyQuadraticModel(ToyQuadraticConfig()),
        args=toy_args(tmp_path, report_to="none"),
        train_dataset=data,
        hessian_dataset=data,
    )
    trainer.train()
    branch = ToyQuadraticModel.from_pretrained(out / "sgd")
    assert torch.equal(branch.theta, trainer.model.theta)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({}, "overwrite_output_dir"),
        ({"modes": "sgd,sideways"}, "unknown mode"),
        ({"args": {"subspace_k": 2}}, "subspace_k"),
        ({"switch_step": 300}, "switch_step"),
        ({"args": {"subspace_mode": "dominant"}}, "--modes"),
        ({"prefix": "adam"}, r"--prefix='adam'.*sgd, gd"),
    ],
)
def test_validation_errors_leave_output_untouched(tmp_path, changes, message):
    out = tmp_path / "existing"
    (out / "sgd").mkdir(parents=True)
    (out / "summary.json").write_text('{"old": true}')
    (out / "sgd" / "README.md").write_text("old card")
    before = snapshot(out)
    kwargs = {"switch_step": changes.get("switch_step", 50), "modes": changes.get("modes", "sgd,dominant")}
    kwargs["prefix"] = changes.get("prefix", "sgd")
    overwrite = bool(changes)  # the first case checks the output-folder refusal itself
    with pytest.raises(ExperimentError, match=message):
        run_experiment(
            PreparedRecipe(ToyQuadraticModel(ToyQuadraticConfig()), toy_quadratic_dataset(5)),
            toy_args(out, **changes.get("args", {})),
            ExperimentPlan(overwrite_output_dir=overwrite, **kwargs),
        )
    assert snapshot(out) == before


def test_parse_modes_and_alignment_steps():
    assert parse_modes("SGD, dom-sgd,bulk_sgd,gd,sgd") == ["sgd", "dominant", "bulk", "gd"]
    with pytest.raises(ExperimentError, match="unknown mode 'dom'"):  # no abbreviations
        parse_modes("sgd,dom")
    with pytest.raises(ValueError, match="choose from"):
        parse_modes("sgd,nope")
    with pytest.raises(ValueError, match="empty"):
        parse_modes(" , ")
    every = default_alignment_steps(1500, 300)
    assert 300 % every == 0 and 20 <= 1500 // every <= 80
    assert default_alignment_steps(10, 3) >= 1


def test_results_table_handles_missing_values():
    table = format_results_table(
        {"recipe": "r", "k": 2, "switch_step": 5, "runs": {"sgd": {"loss_at_switch": 1.0, "final_loss": 0.5}}}
    )
    row = next(line for line in table.splitlines() if line.startswith("sgd"))
    # branch, loss at switch, final loss, final/switch, mean chi_k (missing: "-")
    assert row.split() == ["sgd", "1", "0.5", "0.500", "-"]


def test_tensor_dataset_roundtrip():
    import datasets

    ds = datasets.Dataset.from_dict({"x": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], "labels": [0, 1, 0]})
    tds = to_tensor_dataset(ds)
    assert isinstance(tds, TensorDataset) and len(tds) == 3
    assert torch.equal(tds[1]["x"], torch.tensor([3.0, 4.0])) and int(tds[1]["labels"]) == 1
    assert [int(item["labels"]) for item in tds.__getitems__([2, 0])] == [0, 0]
    assert len(tds.select([0, 2])) == 2
    text = datasets.Dataset.from_dict({"sentence": ["a", "b"], "label": [0, 1]})
    assert to_tensor_dataset(text) is text  # strings stay a datasets.Dataset
    with pytest.raises(ValueError, match="length"):
        TensorDataset({"a": torch.zeros(2), "b": torch.zeros(3)})


def test_multi_process_launch_without_use_cpu_is_refused(tmp_path, monkeypatch):
    """Under a 2-process launch, arguments that see one process would make every rank write everything."""
    args = toy_args(tmp_path / "x", use_cpu=False)
    assert args.world_size == 1  # device set up in this single process
    monkeypatch.setitem(os.environ, "WORLD_SIZE", "2")
    with pytest.raises(ExperimentError, match="use_cpu"):
        run_experiment(
            PreparedRecipe(ToyQuadraticModel(ToyQuadraticConfig()), toy_quadratic_dataset(5)),
            args,
            ExperimentPlan(switch_step=5),
        )
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------------------------- GD prefix


class StepCounter(TrainerCallback):
    """Counts the optimizer steps of one run and records its batch size and first global step."""

    def __init__(self, name: str, counts: Counter, starts: dict) -> None:
        self.name, self.counts, self.starts = name, counts, starts

    def on_train_begin(self, args, state, control, **kw):
        self.starts[self.name] = (state.global_step, args.per_device_train_batch_size)

    def on_step_end(self, args, state, control, **kw):
        self.counts[self.name] += 1


def test_gd_prefix_then_sgd_restores_the_alignment(tmp_path):
    """A full-batch GD prefix (χ_1 → 0 on the toy valley), then minibatch SGD (χ_1 back to ≈ 0.95) and GD branches."""
    counts, starts = Counter(), {}
    out = tmp_path / "gd_prefix"
    result = run_experiment(
        # 30 samples: the minibatch branch resumes mid-epoch (step 20 of 30)
        PreparedRecipe(ToyQuadraticModel(ToyQuadraticConfig()), toy_quadratic_dataset(15), record_trajectory=True),
        toy_args(out, max_steps=45, subspace_alignment_steps=5, subspace_refresh_steps=20, report_to="none"),
        ExperimentPlan(switch_step=20, modes="sgd,gd", prefix="GD"),
        callbacks=lambda name: [StepCounter(name, counts, starts)],
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prefix_optimizer"] == "gd"
    assert summary["prefix_per_device_train_batch_size"] == 30 and summary["per_device_train_batch_size"] == 1
    # the prefix stepped on the full batch: lr = 1/a puts x on the valley floor in one step (SGD: |x| ≈ c|y|/a)
    assert starts["prefix"] == (0, 30)
    assert abs(result.trajectories["prefix"][1][1]) < 1e-6
    state = json.loads((out / "prefix" / "checkpoint-20" / "trainer_state.json").read_text())
    assert state["train_batch_size"] == 30 and state["global_step"] == 20
    # every branch resumed at the switch with its own batch size and trained the remaining 25 steps
    assert counts == {"prefix": 20, "sgd": 25, "gd": 25}
    assert starts["sgd"] == (20, 1) and starts["gd"] == (20, 30)
    sgd, gd = summary["runs"]["sgd"], summary["runs"]["gd"]
    for mode, run in (("sgd", sgd), ("gd", gd)):
        assert run["loss_curve"][-1][0] == 45 and result.trajectories[mode][-1][0] == 45
        assert all(math.isfinite(v) for _, v in run["loss_curve"]) and run["final_loss"] < run["loss_at_switch"]
    assert sgd["chi_k_at_switch"] < 1e-3 and gd["chi_k_at_switch"] < 1e-3  # GD left no sharp component
    assert sgd["mean_chi_k"] > 0.9  # SGD's noise brings it back ...
    assert gd["mean_chi_k"] < 0.05  # ... GD's absence of noise does not
    assert sgd["loss_curve"][:4] == gd["loss_curve"][:4]  # the shared prefix
    claims = {c.claim: c.answer for c in evaluate_claims("gd_prefix", summary)}
    assert claims["GD→SGD restores the alignment"] == "yes"


def test_hessian_num_samples_subset_is_shared_by_every_run(tmp_path):
    """Without a hessian_dataset the runner takes the trainer's seeded subset once; every run measures on it."""
    data = toy_quadratic_dataset(50)
    args = toy_args(tmp_path / "sub", max_steps=20, subspace_alignment_steps=5, report_to="none", hessian_num_samples=7)
    subset = hessian_subset(data, args)
    # the same examples SubspaceTrainer picks by itself
    alone = SubspaceTrainer(model=ToyQuadraticModel(ToyQuadraticConfig()), args=args, train_dataset=data)
    assert alone.hessian_operator.num_samples == 7
    picked = torch.cat([b["sign"] for b in alone.hessian_operator.batches])
    assert torch.equal(picked, subset.columns["sign"])
    mean_sign = float(subset.columns["sign"].mean())
    assert mean_sign != 0.0  # 7 samples: the subset loss differs from the full loss (mean sign 0)

    result = run_experiment(
        PreparedRecipe(ToyQuadraticModel(ToyQuadraticConfig()), data, record_trajectory=True),
        args,
        ExperimentPlan(switch_step=10, modes="sgd,dominant"),
    )
    summary = result.summary
    assert summary["hessian_num_samples"] == 7 and summary["num_train"] == 100
    cfg = ToyQuadraticConfig()

    def subset_loss(point):
        x, y = point
        return 0.5 * (cfg.sharpness * x * x + cfg.flatness * y * y) + mean_sign * cfg.noise * x * y

    traj = {name: {int(p[0]): p[1:] for p in points} for name, points in result.trajectories.items()}
    # the prefix (step 0) and every branch (switch and end) measured the loss over that very subset
    for mode, run in summary["runs"].items():
        curve = dict((int(s), v) for s, v in run["loss_curve"])
        assert curve[0] == pytest.approx(subset_loss(traj["prefix"][0]), rel=1e-5)
        assert curve[10] == pytest.approx(subset_loss(traj[mode][10]), rel=1e-5)
        assert curve[20] == pytest.approx(subset_loss(traj[mode][20]), rel=1e-5)
    assert subset_loss(traj["prefix"][0]) != pytest.approx(0.5 * (cfg.sharpness * 0.02**2 + 1.0), rel=1e-3)


# ----------------------------------------------------------------------------------------------- EMA switch, audits


@pytest.mark.parametrize("threshold", [0.8, 1.0])
def test_ema_switch_stops_after_the_crossing_or_at_the_cap_and_audits_the_basis(tmp_path, threshold):
    """--switch_rule ema: the prefix measures χ_k at every step and stops at the end of the first step whose EMA
    reaches the threshold (the branches start one step later), or at --switch_step (the cap); --basis_audit_steps
    records the exact distance of the basis in use every N projected steps (the toy's Hessian is constant: ≈ 0)."""
    out = tmp_path / "ema"
    args = toy_args(out, max_steps=50, subspace_alignment_steps=10, subspace_refresh_steps=10, report_to="none")
    args = dataclasses.replace(args, subspace_auto_start_threshold=threshold)
    start = ToyQuadraticConfig(init_point=(0.0, 1.0))  # χ_1 = 0 at step 0: the EMA rises over many steps
    result = run_experiment(
        PreparedRecipe(ToyQuadraticModel(start), toy_quadratic_dataset(20)),
        args,
        ExperimentPlan(switch_step=40, switch_rule="ema", modes="sgd,dominant", basis_audit_steps=5, plot=False),
    )
    summary = result.summary
    switch = summary["switch_step"]
    state = json.loads((out / "prefix" / f"checkpoint-{switch}" / "trainer_state.json").read_text())
    ema = [(e["step"], e["subspace/chi_k_full_grad_ema"]) for e in state["log_history"] if "step" in e and
           "subspace/chi_k_full_grad_ema" in e]  # fmt: skip
    assert [s for s, _ in ema] == list(range(switch))  # measured at every prefix step
    crossed = next((s for s, v in ema if v >= threshold), None)
    if threshold < 1.0:
        assert crossed is not None and crossed > 5  # a real crossing, not the first measurement
        assert switch == crossed + 1 and summary["switch_rule"]["crossed_at"] == crossed
    else:
        assert crossed is None and switch == 40 and summary["switch_rule"]["crossed_at"] is None
    assert summary["switch_rule"] == {**summary["switch_rule"], "rule": "ema", "cap": 40, "threshold": threshold}
    for run in summary["runs"].values():
        assert [switch, run["loss_at_switch"]] in run["loss_curve"]  # every branch starts at the switch
        assert run["hvps_branch"] >= 0 and summary["prefix_hvps"] > 0
    assert summary["runs"]["sgd"]["basis_error_audit"] is None  # unprojected: nothing to audit
    audit = summary["runs"]["dominant"]["basis_error_audit"]
    assert [int(s) for s, _ in audit["points"]] == [s for s in range(switch, 50) if s % 5 == 0]
    assert audit["n"] == len(audit["points"]) and audit["max"] < 1e-6 and audit["median"] <= audit["max"]


# ----------------------------------------------------------------------------------------------- branch names, a training set without labels


def test_branch_names_follow_the_optimizer():
    assert optimizer_label("sgd") == "sgd"
    assert optimizer_label("sgd", "momentum=0.9") == "momentum"
    assert optimizer_label("sgd", "momentum=0.9,nesterov=True") == "nesterov"
    assert optimizer_label("adamw_torch") == "adamw" and optimizer_label("adamw_torch_fused") == "adamw"
    assert optimizer_label("sgd", sam_rho=0.05) == "sam-sgd"
    assert [branch_name(m, "adamw") for m in ("sgd", "gd", "dominant", "bulk")] == [
        "adamw", "adamw-gd", "dominant", "bulk",
    ]  # fmt: skip
    assert [branch_name(m, "sgd") for m in ("sgd", "gd", "bulk-gd")] == ["sgd", "gd", "bulk-gd"]


def test_training_set_without_labels_is_refused_by_name(tmp_path):
    import datasets

    from hf_subspace import SubspaceTrainingArguments
    from hf_subspace.experiments.arguments import ExperimentPlan, PreparedRecipe
    from hf_subspace.experiments.experiment import run_experiment
    from hf_subspace.experiments.settings import ExperimentError
    from hf_subspace.models import MLPConfig, MLPForImageClassification

    data = datasets.Dataset.from_dict({"pixel_values": [[[[0.0] * 4] * 4]] * 8})
    args = SubspaceTrainingArguments(output_dir=str(tmp_path / "o"), max_steps=4, report_to="none", use_cpu=True)
    model = MLPForImageClassification(MLPConfig(input_size=16, hidden_sizes=[4], num_labels=2))
    with pytest.raises(ExperimentError, match="has no labels") as err:
        run_experiment(PreparedRecipe(model, data), args, ExperimentPlan(switch_step=2))
    assert "hessian_dataset" not in str(err.value) and not (tmp_path / "o").exists()


def test_overwrite_keeps_branches_left_out_and_names_the_spectrum_files_it_removes(tmp_path, caplog):
    """--overwrite_output_dir replaces what the new run writes; an earlier branch the new --modes leave out is kept,
    and the `hf-subspace spectrum` files inside a replaced branch folder are named in a warning."""
    out = tmp_path / "again"
    args = toy_args(out, max_steps=6, subspace_alignment_steps=3, subspace_refresh_steps=3, report_to="none")
    data = toy_quadratic_dataset(5)
    run_experiment(PreparedRecipe(ToyQuadraticModel(ToyQuadraticConfig()), data), args,
                   ExperimentPlan(switch_step=3, modes="sgd,bulk", plot=False))  # fmt: skip
    (out / "sgd" / "spectrum.json").write_text("{}")
    (out / "bulk" / "spectrum.json").write_text("{}")
    with caplog.at_level("WARNING", logger="hf_subspace"):
        run_experiment(PreparedRecipe(ToyQuadraticModel(ToyQuadraticConfig()), data), args,
                       ExperimentPlan(switch_step=3, modes="sgd", overwrite_output_dir=True, plot=False))  # fmt: skip
    assert (out / "bulk" / "spectrum.json").is_file() and (out / "bulk" / "model.safetensors").is_file()
    assert not (out / "sgd" / "spectrum.json").exists() and (out / "sgd" / "model.safetensors").is_file()
    assert list(json.loads((out / "summary.json").read_text())["runs"]) == ["sgd"]
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert "sgd/spectrum.json" in warnings and "kept the earlier experiment's branch folder(s) bulk" in warnings


def test_resumed_branch_records_the_whole_branch(tmp_path):
    """--resume_experiment after a stop: the branch resumes from its latest checkpoint, and its record has the basis
    audits and seconds of the steps before that checkpoint too (they live in ``branch_progress.json``)."""

    def run(out: Path):
        return run_experiment(
            PreparedRecipe(ToyQuadraticModel(ToyQuadraticConfig()), toy_quadratic_dataset(50)),
            toy_args(out, max_steps=120, save_strategy="steps", save_steps=20, report_to="none"),
            ExperimentPlan(
                switch_step=40, modes=["dominant"], recipe="toy_quadratic", basis_audit_steps=10,
                resume_experiment=True,
            ),
        )  # fmt: skip

    whole = run(tmp_path / "whole").summary["runs"]["dominant"]
    out = tmp_path / "stopped"
    run(out)
    branch = out / "dominant"
    # As if stopped after the checkpoint at step 80: no later checkpoint, no record of the finished branch.
    for checkpoint in branch.glob("checkpoint-*"):
        if int(checkpoint.name.split("-")[1]) > 80:
            shutil.rmtree(checkpoint)
    (branch / "branch_record.json").unlink()
    saved = json.loads((branch / "checkpoint-80" / BranchProgress.FILE).read_text())
    before = [p for p in whole["basis_error_audit"]["points"] if p[0] < 80]  # audited before the step after 80
    assert saved["audit"] == before and len(before) >= 3 and saved["seconds"] > 0
    saved["seconds"] = 1e4  # a long first session, so the resumed record must include it
    (branch / "checkpoint-80" / BranchProgress.FILE).write_text(json.dumps(saved))

    resumed = run(out).summary["runs"]["dominant"]
    assert resumed["basis_error_audit"]["points"] == whole["basis_error_audit"]["points"]
    assert resumed["basis_error_audit"]["n"] == whole["basis_error_audit"]["n"] > len(before)
    assert resumed["final_loss"] == whole["final_loss"]
    assert 1e4 < resumed["wall_time_s"] < 1e4 + 600


def test_resume_refuses_other_training_options_but_not_other_branches(tmp_path):
    """--resume_experiment continues only what the same options would train: a changed lr (or any option that shapes
    the trajectory) is refused before anything runs; another set of branches reuses the finished ones."""
    out = tmp_path / "run"

    def run(modes: list[str], **args):
        return run_experiment(
            PreparedRecipe(ToyQuadraticModel(ToyQuadraticConfig()), toy_quadratic_dataset(50)),
            toy_args(out, max_steps=80, save_strategy="steps", save_steps=20, report_to="none", **args),
            ExperimentPlan(switch_step=40, modes=modes, recipe="toy_quadratic", resume_experiment=True),
        )

    first = run(["sgd"]).summary["runs"]["sgd"]
    before = snapshot(out)
    with pytest.raises(ExperimentError, match=r"--learning_rate 0.001 -> 0.002.*--output_dir"):
        run(["sgd", "dominant"], learning_rate=2e-3)
    assert snapshot(out) == before  # refused before anything was trained or written
    both = run(["sgd", "dominant"]).summary["runs"]  # only the branches to run differ: the sgd branch is reused
    assert both["sgd"]["final_loss"] == first["final_loss"] and "dominant" in both


def test_resume_compares_data_by_file_and_only_options_both_recorded(tmp_path, monkeypatch):
    """The same data file named from another folder is not a change, another file is; an option a later version
    added (absent from the saved record) is not compared, while every option both recorded still is."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.npz").write_bytes(b"x")
    (data / "other.npz").write_bytes(b"y")
    args = toy_args(tmp_path / "out")

    def options(train_file: str) -> dict:
        return resumed_options(RecipeArguments(train_file=train_file), args)

    monkeypatch.chdir(tmp_path)
    saved = options("data/train.npz")
    monkeypatch.chdir(data)
    check_resumed_options(saved, options("train.npz"))  # the same file, named from its own folder
    with pytest.raises(ExperimentError, match=r"--train_file .*train\.npz' -> .*other\.npz'"):
        check_resumed_options(saved, options("other.npz"))
    older = {k: v for k, v in saved.items() if k != "subspace_basis_tol"}  # recorded before the option existed
    check_resumed_options(older, options("train.npz"))
    with pytest.raises(ExperimentError, match=r"--seed 0 -> 1\)"):
        check_resumed_options(older, {**options("train.npz"), "seed": 1})
