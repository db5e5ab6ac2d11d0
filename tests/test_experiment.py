"""The paper's protocol (`hf_subspace.experiment`) on the toy valley: outputs, result direction, validation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from hf_subspace._branches import default_alignment_steps, parse_modes
from hf_subspace.experiment import (
    ExperimentError,
    TensorDataset,
    format_results_table,
    run_experiment,
    to_tensor_dataset,
)
from hf_subspace.models.toy import ToyQuadraticConfig, ToyQuadraticModel, toy_quadratic_dataset
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
        ToyQuadraticModel(ToyQuadraticConfig()),
        toy_args(out),
        toy_quadratic_dataset(50),
        switch_step=50,
        modes=MODES,
        recipe="toy_quadratic",
        overwrite_output_dir=True,
        record_trajectory=True,
        extras={"note": "test"},
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
        events = list((out / mode / "runs").rglob("events.out.tfevents.*"))
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
    ],
)
def test_validation_errors_leave_output_untouched(tmp_path, changes, message):
    out = tmp_path / "existing"
    (out / "sgd").mkdir(parents=True)
    (out / "summary.json").write_text('{"old": true}')
    (out / "sgd" / "README.md").write_text("old card")
    before = snapshot(out)
    kwargs = {"switch_step": changes.get("switch_step", 50), "modes": changes.get("modes", "sgd,dominant")}
    overwrite = bool(changes)  # the first case checks the output-folder refusal itself
    with pytest.raises(ExperimentError, match=message):
        run_experiment(
            ToyQuadraticModel(ToyQuadraticConfig()),
            toy_args(out, **changes.get("args", {})),
            toy_quadratic_dataset(5),
            overwrite_output_dir=overwrite,
            **kwargs,
        )
    assert snapshot(out) == before


def test_parse_modes_and_alignment_steps():
    assert parse_modes("SGD, dom,bulk_sgd,gd,sgd") == ["sgd", "dominant", "bulk", "gd"]
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
    assert "0.500" in table and "-" in table


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
        run_experiment(ToyQuadraticModel(ToyQuadraticConfig()), args, toy_quadratic_dataset(5), switch_step=5)
    assert not (tmp_path / "x").exists()
