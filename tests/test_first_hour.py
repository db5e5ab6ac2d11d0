"""A newcomer's first hour (issue 14): offline fail-fast, outputs that can be reused, one-line errors, help texts,
quiet consoles, branch names, the global batch and the content of the figures."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hf_subspace import cli
from hf_subspace.experiments import _hub, plotting
from hf_subspace.experiments.branches import branch_name, optimizer_label
from hf_subspace.experiments.quickstart import README_BEGIN, README_END, render_readme_block, update_readme
from hf_subspace.experiments.recipes import parse_recipe_arguments

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------- offline


@pytest.fixture
def no_network(monkeypatch):
    """No ``HF_HUB_OFFLINE``, and every name lookup fails (a machine without network); yields the lookup count."""
    import huggingface_hub.constants

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_EVALUATE_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    for module in ("datasets.config", "evaluate.config"):
        if module in sys.modules:
            for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
                if hasattr(sys.modules[module], flag):
                    monkeypatch.setattr(sys.modules[module], flag, False)
    monkeypatch.setattr(_hub, "_state", {})
    lookups: list[object] = []

    def unreachable(host, *args, **kwargs):
        lookups.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", unreachable)
    return lookups  # monkeypatch restores the flags and variables that offline mode sets


def test_unreachable_hub_falls_back_offline_after_one_probe(no_network, caplog):
    """Issue 14: the SST-2 recipe spent ~48 s on Hub retries for its tokenizer. One connection attempt now decides,
    the process goes offline (no request of transformers reaches the network), and one line says so."""
    from hf_subspace.experiments.data import build_tokenizer

    name = "hf-subspace-tests/no-such-tokenizer"  # a Hub id no cache holds (bert-base-uncased in the issue)
    with caplog.at_level("WARNING"):
        tokenizer = build_tokenizer(["a good movie", "a bad film"], name_or_path=name)
        again = build_tokenizer(["x"], name_or_path=name)
    assert tokenizer.convert_ids_to_tokens(tokenizer("good movie")["input_ids"]) == ["good", "movie"]  # word level
    assert again is not None
    assert len(no_network) == 1, no_network  # the probe's one lookup; no retries of the Hub client
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(unreachable) == 1 and "HF_HUB_OFFLINE=1" in unreachable[0].getMessage()


def test_offline_variable_means_no_probe(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(_hub, "_state", {})
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: pytest.fail("probed although HF_HUB_OFFLINE=1"))
    assert _hub.ensure_hub_or_offline() is False


# ----------------------------------------------------------------------------------------------- outputs


def _tiny_mnist(path: Path, n: int = 120) -> None:
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 255, size=(n, 6, 6), dtype=np.uint8), y=np.arange(n) % 10)


def test_run_names_branches_and_spectrum_works_from_another_folder(tmp_path, monkeypatch, capfd):
    """A relative --train_file, a momentum run (branch named `momentum`), a quiet console; then `spectrum` on the
    branch from another folder, after the validation file is gone."""
    work, other = tmp_path / "work", tmp_path / "elsewhere"
    (work / "data").mkdir(parents=True)
    other.mkdir()
    _tiny_mnist(work / "data" / "train.npz")
    _tiny_mnist(work / "data" / "val.npz", 30)
    monkeypatch.chdir(work)
    code = cli.main([
        "run", "mlp_mnist", "--train_file", "data/train.npz", "--validation_file", "data/val.npz",
        "--num_train", "100", "--hidden_sizes", "8", "--max_steps", "6", "--switch_step", "3",
        "--subspace_alignment_steps", "3", "--subspace_refresh_steps", "3", "--logging_steps", "3",
        "--optim_args", "momentum=0.9", "--modes", "sgd,gd,bulk", "--output_dir", "out", "--disable_tqdm", "true",
        "--experiment_name", "tiny_momentum",
    ])  # fmt: skip
    assert code == 0
    printed = capfd.readouterr()
    console = printed.out + printed.err
    for noise in ("Writing model shards", "do not match", "pin_memory", "apply from the resumed step"):
        assert noise not in console, noise
    summary = json.loads((work / "out" / "summary.json").read_text())
    assert list(summary["runs"]) == ["momentum", "momentum-gd", "bulk"]  # named by what they ran
    assert summary["runs"]["momentum"]["mode"] == "sgd" and summary["name"] == "tiny_momentum"
    assert summary["global_train_batch_size"] == 50 and summary["loss_type"] == "mse"
    assert "MSE" in summary["loss"] and "the first 100 training examples" in summary["dataset_description"]
    assert "tiny_momentum (data/train.npz): k = 10, switch at step 3 of 6, global batch 50" in printed.out
    branch = work / "out" / "momentum"
    assert list(branch.glob("events.out.tfevents.*")), "the TensorBoard run is named by its branch"
    assert not (branch / "runs").exists()
    card = (branch / "README.md").read_text()
    assert "# tiny_momentum-momentum" in card and "Loss: MSE" in card
    assert str((work / "data" / "train.npz").resolve()) in card  # the data, not just a file name
    record = json.loads((branch / "hf_subspace_experiment.json").read_text())["recipe_args"]
    assert Path(record["train_file"]).is_absolute() and record["loss_type"] == "mse"

    (work / "data" / "val.npz").unlink()  # spectrum needs only the training data
    monkeypatch.chdir(other)
    assert cli.main(["spectrum", str(branch), "--k", "2", "--num_samples", "50", "--output_dir", "spec"]) == 0
    spectrum = json.loads((other / "spec" / "spectrum.json").read_text())
    assert spectrum["num_samples"] == 50 and len(spectrum["eigenvalues"]) == 4


def test_paper_recipes_keep_the_global_batch_over_processes(monkeypatch, caplog):
    from hf_subspace.experiments import recipes

    monkeypatch.setattr(recipes, "_launched_processes", lambda: 2)  # as under torchrun --nproc_per_node 2
    _, ta = parse_recipe_arguments("mlp_mnist", ["--report_to", "none"])
    assert ta.per_device_train_batch_size == 25  # 2 × 25 = the paper's 50
    _, ta = parse_recipe_arguments("mlp_mnist", ["--per_device_train_batch_size", "50", "--report_to", "none"])
    assert ta.per_device_train_batch_size == 50  # given on the command line: per process
    monkeypatch.setattr(recipes, "_launched_processes", lambda: 3)
    with caplog.at_level("WARNING"):
        _, ta = parse_recipe_arguments("mlp_mnist", ["--report_to", "none"])
    assert ta.per_device_train_batch_size == 50  # 50 does not split over 3: kept, and said
    assert "global batch is 150" in caplog.text and "--per_device_train_batch_size" in caplog.text


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


def test_readme_block_is_generated_from_the_quickstart_report(tmp_path):
    report = {
        "runs": {"toy_quadratic": {"table": "toy table"}, "mlp_digits": {"table": "digits table"}},
        "seconds": 72.4, "threads": 1, "command": "hf-subspace quickstart", "date": "2026-11-30",
    }  # fmt: skip
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_BEGIN}\nMeasured (152 s): typed numbers\n{README_END}\noutro\n")
    assert update_readme(readme, report) is True
    text = readme.read_text()
    assert "typed numbers" not in text and "toy table\n\ndigits table" in text and "72 s" in text
    assert text.startswith("intro\n") and text.endswith("outro\n")
    assert update_readme(readme, report) is False  # idempotent
    assert render_readme_block(report) in text
    for path in (REPO / "README.md", REPO / "recipes" / "README.md"):
        assert README_BEGIN in path.read_text(), f"{path} has no generated quick-start block"


# ----------------------------------------------------------------------------------------------- errors and help


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--modes", "sgd,dom"], "unknown mode 'dom'"),
        (["--max_step", "5"], "did you mean --max_steps"),
        (["--subspace_mode", "bulky"], "invalid choice: 'bulky'"),
        (["--standardize", "sideways"], "--standardize"),
    ],
)
def test_run_errors_are_one_short_line(tmp_path, capsys, options, expected):
    code = cli.main(["run", "toy_quadratic", "--output_dir", str(tmp_path / "o"), *options])
    assert code == 2
    assert expected in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


def test_recipe_script_errors_are_one_line(tmp_path):
    """`python recipes/<recipe>.py` shares the error path of `hf-subspace run` (it was a 20-line traceback)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HF_SUBSPACE_DEBUG", None)
    script = REPO / "recipes" / "toy_quadratic.py"
    done = subprocess.run(
        [sys.executable, str(script), "--modes", "sgd,sideways", "--output_dir", str(tmp_path / "o")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2
    assert "unknown mode 'sideways'" in _one_error_line(done.stderr)


def test_text_data_errors_name_the_missing_column_and_the_option(tmp_path):
    from hf_subspace.experiments.data import DatasetLoadError, load_text_classification

    tsv = tmp_path / "train.tsv"
    tsv.write_text("sentence\tstars\na fine film\t1\na dull film\t0\n")
    with pytest.raises(DatasetLoadError) as err:
        load_text_classification(None, train_file=tsv)
    message = str(err.value)
    assert "no label column" in message and "--label_column" in message
    assert "no text column" not in message and "'sentence' and" not in message
    data = load_text_classification(None, train_file=tsv, label_column="stars")
    assert data["train"]["label"] == [1, 0]


def test_image_data_without_labels_names_what_is_missing(tmp_path):
    import datasets

    from hf_subspace.experiments.data import DatasetLoadError, load_image_classification

    folder = tmp_path / "unlabelled"
    datasets.Dataset.from_dict({"pixel_values": [[[0.0, 1.0], [1.0, 0.0]]] * 4}).save_to_disk(str(folder))
    with pytest.raises(DatasetLoadError, match="has no labels") as err:
        load_image_classification(str(folder), num_train=2)
    assert "hessian_dataset" not in str(err.value)


def test_help_texts(capsys):
    with pytest.raises(SystemExit):
        parse_recipe_arguments("mlp_mnist", ["--help"])
    mlp_help = capsys.readouterr().out
    assert "--hidden_sizes" in mlp_help and "--standardize" in mlp_help
    for text_only in ("--tokenizer_name", "--max_seq_length", "--text_column", "--label_column", "--task"):
        assert text_only not in mlp_help, text_only
    assert "--no_plot" in mlp_help and "Write no figures" in mlp_help
    with pytest.raises(SystemExit):
        parse_recipe_arguments("transformer_sst2", ["--help"])
    assert "--label_column" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["quickstart", "--help"])
    quick_help = capsys.readouterr().out
    assert "15x" not in quick_help and "--update_readme" in quick_help
    # an invalid top-level choice: the error first, in one line, no usage block
    with pytest.raises(SystemExit) as exc:
        cli.main(["spectrum", "x", "--method", "power"])
    assert exc.value.code == 2
    assert "invalid choice: 'power'" in _one_error_line(capsys.readouterr().err)


# ----------------------------------------------------------------------------------------------- figures


def _summary() -> dict:
    steps = list(range(0, 201, 10))
    runs = {}
    for mode, sub, full, rate in (
        ("sgd", "none", False, 0.02), ("gd", "none", True, 0.02), ("dominant", "dominant", False, 0.0),
        ("bulk", "bulk", False, 0.02),
    ):  # fmt: skip
        loss = [2.0 * np.exp(-0.01 * s) if s <= 100 else 2.0 * np.exp(-1.0 - rate * (s - 100)) for s in steps]
        chi = [0.9 if s <= 100 or mode != "gd" else 0.0 for s in steps]
        runs[mode] = {
            "loss_curve": [[s, v] for s, v in zip(steps, loss)],
            "chi_k_curve": [[s, c] for s, c in zip(steps, chi)],
            "subspace_mode": sub,
            "full_batch": full,
        }
    return {"recipe": "mlp_mnist", "name": "mlp_digits", "dataset": "digits", "k": 10, "switch_step": 100, "runs": runs}


def test_summary_figure_keeps_every_branch_visible():
    figure = plotting.summary_figure(_summary())
    ax_loss, ax_chi = figure.axes[:2]
    assert figure.get_suptitle().startswith("mlp_digits")
    for ax in (ax_loss, ax_chi):
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert {"sgd", "gd", "dominant", "bulk", "shared SGD prefix"} <= set(lines)
        prefix = lines["shared SGD prefix"]
        assert prefix.get_xdata().max() == 100 and prefix.get_color() == plotting.PREFIX_COLOR  # drawn once
        curves = [line for line in ax.get_lines() if not line.get_label().startswith("switch")]
        assert sum(1 for line in curves if np.min(line.get_xdata()) < 100) == 1
        branches = [lines[m] for m in ("sgd", "gd", "dominant", "bulk")]
        assert all(np.min(line.get_xdata()) == 100 for line in branches)  # from the switch on
        styles = {(line.get_linestyle(), line.get_marker()) for line in branches}
        assert len(styles) == 4  # SGD stays visible under Bulk-SGD: no two branches share line style and marker
        assert len({line.get_color() for line in branches} | {prefix.get_color()}) == 5
    assert ax_loss.get_yscale() == "log" and ax_loss.get_xlabel() == "step"


def test_unprojected_branch_named_after_its_optimizer_is_drawn_like_sgd():
    summary = _summary()
    summary["runs"] = {("adamw" if k == "sgd" else k): v for k, v in summary["runs"].items()}
    lines = {line.get_label(): line for line in plotting.summary_figure(summary).axes[0].get_lines()}
    assert lines["adamw"].get_color() == "black" and lines["adamw"].get_marker() == "o"


def test_spectrum_figure_has_integer_index_ticks():
    figure = plotting.spectrum_figure([40.0, 12.0, 5.0, 0.2, 0.1, 0.05, 0.01], k=3, title="spectrum")
    (ax,) = figure.axes
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert "index" in ax.get_xlabel() and ax.get_title() == "spectrum"


def test_toy_trajectory_figure_is_readable():
    t = np.arange(0, 60)
    sgd = np.stack([t, 0.003 * (-1.0) ** t, 1.0 - 0.005 * t], axis=1)  # bounces across the valley every step
    gd = np.stack([t, 0.0 * t, 1.0 - 0.005 * t], axis=1)
    figure = plotting.trajectory_figure(
        lambda x, y: 0.5 * (1000 * x**2 + y**2), {"sgd": sgd, "gd": gd}, (-0.01, 0.01), (0.6, 1.05),
        title="toy", xlabel="θ₁ (sharp)", ylabel="θ₂ (flat)",
    )  # fmt: skip
    contour_ax = figure.axes[0]
    assert contour_ax.get_xlabel() == "θ₁ (sharp)" and contour_ax.get_ylabel() == "θ₂ (flat)"
    assert any("not to scale" in text.get_text() for text in contour_ax.texts)  # the 40:1 stretch is stated
    sgd_path = [
        line for line in contour_ax.get_lines() if line.get_xdata().size == t.size and line.get_color() == "black"
    ]
    assert sgd_path and sgd_path[0].get_linestyle() == "None"  # dots, not a solid wedge of zigzags
    markers = [line for line in contour_ax.get_lines() if line.get_marker() in ("o", "*")]
    assert markers and all(not line.get_clip_on() for line in markers)  # start/end markers never clipped
    assert len(figure.axes) == 3 and figure.axes[2].get_xlabel() == "step"  # coordinates over the steps


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
