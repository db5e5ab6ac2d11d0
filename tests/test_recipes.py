"""Recipes: argument parsing (defaults < config < flags), the paper's configs, offline smoke runs, two processes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from _torchrun import torchrun_two

from hf_subspace.experiments.recipes import (
    RECIPES,
    WHOLE_TRAINING_SET,
    get_recipe,
    load_config_file,
    parse_recipe_arguments,
    prepare_recipe,
    recipe_parser,
    run_recipe,
)
from hf_subspace.experiments.settings import ExperimentError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "recipes" / "configs"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MNIST = SHARED_DATA / "mnist"
SST2 = SHARED_DATA / "sst2"
QUIET = ["--disable_tqdm", "true", "--report_to", "none"]


def run(recipe: str, argv: list[str]):
    recipe_args, training_args = parse_recipe_arguments(recipe, [*argv, *QUIET])
    return run_recipe(recipe, recipe_args, training_args, print_table=False)


# ----------------------------------------------------------------------------------------------- arguments


def test_defaults_config_and_flags(tmp_path):
    ra, ta = parse_recipe_arguments("mlp_mnist", [])
    assert (ta.learning_rate, ta.per_device_train_batch_size, ta.subspace_k) == (0.01, 50, 10)
    assert str(ta.optim.value if hasattr(ta.optim, "value") else ta.optim) == "sgd" and ta.max_grad_norm == 0.0
    assert (ra.dataset_name, ra.num_train, ra.hidden_sizes) == ("mnist", 5000, "200,200")
    config = tmp_path / "c.yaml"
    config.write_text("learning_rate: 1e-3\nswitch_step: 7\nmodes: sgd,gd\n")
    ra, ta = parse_recipe_arguments("mlp_mnist", [str(config)])
    assert (ta.learning_rate, ra.switch_step, ra.modes) == (1e-3, 7, "sgd,gd")
    ra, ta = parse_recipe_arguments("mlp_mnist", ["--config", str(config), "--switch_step", "9", "--sam_rho", "0.05"])
    assert (ta.learning_rate, ra.switch_step, ta.sam_rho) == (1e-3, 9, 0.05)
    config.write_text("learning_rate: 0.1\nnot_an_option: 3\n")
    with pytest.raises(ValueError, match="not_an_option"):
        parse_recipe_arguments("mlp_mnist", [str(config)])
    with pytest.raises(ValueError, match="unknown recipe"):
        get_recipe("resnet_imagenet")


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_shipped_configs_match_the_paper(name):
    path = CONFIGS / f"{name}.yaml"
    assert path.is_file()
    assert load_config_file(path)["recipe"] == name
    ra, ta = parse_recipe_arguments(name, [str(path)])
    optim = str(getattr(ta.optim, "value", ta.optim))
    assert optim == "sgd" and ta.max_grad_norm == 0.0 and ra.switch_step < ta.max_steps
    expected = {
        "mlp_mnist": {"lr": 0.01, "bs": 50, "k": 10, "n": 5000, "loss": "mse"},
        "cnn_cifar10": {"lr": 0.001, "bs": 50, "k": 10, "n": 5000, "loss": "mse"},
        "transformer_sst2": {"lr": 0.001, "bs": 50, "k": 2, "n": 1000, "loss": "mse"},
    }.get(name)
    if expected:
        got = {"lr": ta.learning_rate, "bs": ta.per_device_train_batch_size, "k": ta.subspace_k,
               "n": ra.num_train, "loss": ra.loss_type}  # fmt: skip
        assert got == expected
    if name == "mlp_mnist":
        assert (ra.hidden_sizes, ra.activation) == ("200,200", "tanh")
    for launcher in ("single_cpu", "multi_gpu", "multi_cpu"):
        assert (REPO / "recipes" / "accelerate" / f"{launcher}.yaml").is_file()
    assert (
        "MULTI_CPU" not in (REPO / "recipes" / "accelerate" / "multi_cpu.yaml").read_text().split("\n# Equivalent")[1]
    )


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_shipped_config_is_the_recipes_defaults(name):
    """recipes/configs/<name>.yaml writes out the recipe's one source of defaults (settings.RECIPE_SPECS): parsing
    it gives exactly the settings of no config at all, and every value it sets is the recipe's."""
    spec = get_recipe(name)
    with_config = parse_recipe_arguments(name, [str(CONFIGS / f"{name}.yaml")])
    without = parse_recipe_arguments(name, [])
    assert dataclasses.asdict(with_config[0]) == dataclasses.asdict(without[0])
    assert with_config[1].to_dict() == without[1].to_dict()
    for key, value in load_config_file(CONFIGS / f"{name}.yaml").items():
        if key in spec.defaults:
            assert value == spec.defaults[key], (name, key)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_help_shows_the_recipes_defaults(name, capsys):
    """`hf-subspace run <recipe> --help` is generated from the recipe's defaults."""
    spec = get_recipe(name)
    parser = recipe_parser(name)
    for key, value in spec.defaults.items():
        assert parser.get_default(key) == value, (name, key)
    with pytest.raises(SystemExit):
        parse_recipe_arguments(name, ["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for key in ("learning_rate", "max_steps", "subspace_k", "switch_step", "per_device_eval_batch_size"):
        entry = text[text.index(f", --{key.replace('_', '-')} ") :]
        assert entry[entry.index("(default: ") :].startswith(f"(default: {spec.defaults[key]})"), (name, key)


def test_missing_file_and_refused_output_dir_touch_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ExperimentError, match="train_file"):
        run("mlp_mnist", ["--train_file", str(tmp_path / "missing.npz"), "--output_dir", str(tmp_path / "new")])
    assert not (tmp_path / "new").exists()
    with pytest.raises(ExperimentError, match="overwrite_output_dir"):
        run("toy_quadratic", ["--output_dir", str(out)])
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    with pytest.raises(ExperimentError, match="model_name_or_path"):
        run("finetune", ["--output_dir", str(tmp_path / "ft")])


# ----------------------------------------------------------------------------------------------- smoke runs


@pytest.mark.skipif(not (MNIST / "train.npz").is_file(), reason="shared MNIST copy not available")
def test_mlp_mnist_offline_from_local_files(tmp_path):
    result = run("mlp_mnist", [
        "--train_file", str(MNIST / "train.npz"), "--validation_file", str(MNIST / "t10k-images-idx3-ubyte.gz"),
        "--num_train", "200", "--num_validation", "100", "--hidden_sizes", "32,32", "--max_steps", "6",
        "--switch_step", "3", "--subspace_alignment_steps", "3", "--output_dir", str(tmp_path / "mnist"),
    ])  # fmt: skip
    summary = json.loads(result.summary_path.read_text())
    assert summary["num_train"] == 200 and summary["hessian_num_samples"] == 200
    assert summary["image_shape"] == [1, 28, 28]
    for run_ in summary["runs"].values():
        assert 0.0 <= run_["eval_accuracy"] <= 1.0 and run_["final_loss"] > 0
    meta = json.loads((tmp_path / "mnist" / "sgd" / "hf_subspace_experiment.json").read_text())
    assert meta["recipe"] == "mlp_mnist" and meta["recipe_args"]["num_train"] == 200


@pytest.mark.skipif(not (SST2 / "train.tsv").is_file(), reason="shared SST-2 copy not available")
def test_transformer_sst2_offline_from_local_files(tmp_path):
    result = run("transformer_sst2", [
        "--train_file", str(SST2 / "train.tsv"), "--validation_file", str(SST2 / "dev.tsv"),
        "--num_train", "48", "--num_validation", "32", "--max_seq_length", "16", "--max_steps", "4",
        "--switch_step", "2", "--subspace_alignment_steps", "2", "--subspace_refresh_steps", "5",
        "--per_device_train_batch_size", "16", "--hessian_batch_size", "48", "--modes", "sgd,bulk",
        "--output_dir", str(tmp_path / "sst2"),
    ])  # fmt: skip
    assert set(result.summary["runs"]) == {"sgd", "bulk"} and result.summary["k"] == 2
    assert (tmp_path / "sst2" / "bulk" / "tokenizer_config.json").is_file()  # the offline-trained tokenizer
    assert all("eval_accuracy" in r for r in result.summary["runs"].values())


def test_loss_and_optimizer_variants(tmp_path):
    """Cross entropy + momentum + SAM, and Adam, through recipe options (resumed optimizer state included)."""
    tiny = ["--dataset_name", "digits", "--num_train", "100", "--num_validation", "20", "--hidden_sizes", "8",
            "--max_steps", "4", "--switch_step", "2", "--subspace_alignment_steps", "2", "--modes", "sgd,dominant"]  # fmt: skip
    result = run("mlp_mnist", [*tiny, "--loss_type", "cross_entropy", "--optim_args", "momentum=0.9",
                               "--sam_rho", "0.05", "--output_dir", str(tmp_path / "ce")])  # fmt: skip
    assert result.summary["optim_args"] == "momentum=0.9" and result.summary["sam_rho"] == 0.05
    card = (tmp_path / "ce" / "dominant" / "README.md").read_text()
    assert "hf-subspace" in card
    result = run("mlp_mnist", [*tiny, "--optim", "adamw_torch", "--output_dir", str(tmp_path / "adam")])
    assert result.summary["optimizer"] == "adamw_torch"


def test_finetune_local_checkpoints(tmp_path):
    """finetune with a tiny local BERT (text) and a tiny local ViT (image), as if they came from the Hub."""
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        ViTConfig,
        ViTForImageClassification,
        ViTImageProcessor,
    )

    from hf_subspace.experiments.data import build_tokenizer

    texts = ["a good movie", "a bad film", "great acting", "terrible plot", "fine", "awful"] * 4
    (tmp_path / "train.csv").write_text("sentence,label\n" + "\n".join(f"{t},{i % 2}" for i, t in enumerate(texts)))
    tokenizer = build_tokenizer(texts, vocab_size=64, max_length=8)
    bert = BertForSequenceClassification(BertConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, num_labels=2))  # fmt: skip
    bert.save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    common = ["--max_steps", "3", "--switch_step", "1", "--subspace_alignment_steps", "1", "--modes", "sgd,bulk",
              "--per_device_train_batch_size", "8", "--max_seq_length", "8"]  # fmt: skip
    result = run("finetune", [*common, "--model_name_or_path", str(tmp_path / "bert"), "--loss_type", "mse",
                              "--train_file", str(tmp_path / "train.csv"), "--output_dir", str(tmp_path / "out_text")])  # fmt: skip
    assert result.summary["task"] == "text" and result.summary["runs"]["bulk"]["final_loss"] > 0

    vit = ViTForImageClassification(ViTConfig(
        image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=10))  # fmt: skip
    vit.save_pretrained(tmp_path / "vit")
    ViTImageProcessor(size={"height": 8, "width": 8}).save_pretrained(tmp_path / "vit")
    result = run("finetune", [*common, "--model_name_or_path", str(tmp_path / "vit"), "--dataset_name", "digits",
                              "--num_train", "40", "--num_validation", "10", "--output_dir", str(tmp_path / "out_img")])  # fmt: skip
    assert result.summary["task"] == "image" and 0.0 <= result.summary["runs"]["sgd"]["eval_accuracy"] <= 1.0


def test_prefix_and_hessian_set_options(tmp_path):
    ra, ta = parse_recipe_arguments("toy_quadratic", [])
    assert ra.prefix == "sgd" and ta.hessian_num_samples == WHOLE_TRAINING_SET  # the whole training subset
    for name in RECIPES:  # every recipe keeps its Hessian set = the whole training subset by default
        assert get_recipe(name).defaults["hessian_num_samples"] == WHOLE_TRAINING_SET
    ra, ta = parse_recipe_arguments("mlp_mnist", ["--prefix", "gd", "--hessian_num_samples", "300"])
    assert ra.prefix == "gd" and ta.hessian_num_samples == 300
    with pytest.raises(ValueError, match="invalid choice: 'adam'"):  # one line, not the usage
        parse_recipe_arguments("toy_quadratic", ["--prefix", "adam"])
    config = tmp_path / "c.yaml"
    config.write_text("prefix: momentum\n")
    with pytest.raises(ValueError, match="--prefix"):
        parse_recipe_arguments("toy_quadratic", [str(config)])


def test_toy_recipe_with_gd_prefix_and_hessian_subset(tmp_path):
    """``hf-subspace run toy_quadratic --prefix gd --modes sgd,gd``: the summary records the prefix and the Hessian
    set; by default the Hessian set is the whole training subset even above the trainer's default of 1,000."""
    tiny = [
        "--max_steps",
        "6",
        "--switch_step",
        "3",
        "--subspace_alignment_steps",
        "3",
        "--subspace_refresh_steps",
        "3",
    ]
    result = run("toy_quadratic", [*tiny, "--prefix", "gd", "--modes", "sgd,gd", "--num_train", "1200",
                                   "--plot", "false", "--output_dir", str(tmp_path / "whole")])  # fmt: skip
    summary = json.loads(result.summary_path.read_text())
    assert summary["prefix_optimizer"] == "gd" and summary["prefix_per_device_train_batch_size"] == 1200
    assert summary["num_train"] == 1200 and summary["hessian_num_samples"] == 1200
    assert summary["runs"]["sgd"]["chi_k_at_switch"] < 1e-3 < summary["runs"]["sgd"]["final_chi_k"]
    meta = json.loads((tmp_path / "whole" / "sgd" / "hf_subspace_experiment.json").read_text())
    assert meta["recipe_args"]["prefix"] == "gd"
    result = run("toy_quadratic", [*tiny, "--modes", "sgd", "--hessian_num_samples", "10", "--plot", "false",
                                   "--output_dir", str(tmp_path / "subset")])  # fmt: skip
    assert result.summary["prefix_optimizer"] == "sgd"
    assert result.summary["num_train"] == 100 and result.summary["hessian_num_samples"] == 10


def test_prepare_toy_builds_a_two_parameter_model():
    ra, ta = parse_recipe_arguments("toy_quadratic", ["--report_to", "none"])
    prepared = prepare_recipe("toy_quadratic", ra, ta)
    assert sum(p.numel() for p in prepared.model.parameters()) == 2 and prepared.record_trajectory
    assert len(prepared.train_dataset) == 100


# ----------------------------------------------------------------------------------------------- two processes


@pytest.mark.distributed
def test_two_processes_with_torchrun(tmp_path):
    out = tmp_path / "ddp"
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"}
    argv = [str(REPO / "recipes" / "toy_quadratic.py"), "--max_steps", "40", "--switch_step", "20",
            "--subspace_alignment_steps", "10", "--modes", "gd,dominant", "--disable_tqdm", "true",
            "--output_dir", str(out)]  # fmt: skip
    proc = torchrun_two(argv, env, timeout=240)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2  # measured inside the workers
    assert summary["global_train_batch_size"] == 2  # the toy's batch of 1 cannot be split: one per process
    assert summary["runs"]["gd"]["loss_curve"][-1][0] == 40
    assert proc.stdout.count("final/switch") == 1  # the table is printed by rank 0 only
    for run_dir in ["prefix", "gd", "dominant"]:
        events = list((out / run_dir).glob("events.out.tfevents.*"))  # the TensorBoard run is named by its branch
        assert events, run_dir
        assert len({e.name.split(".")[-2] for e in events}) == 1, events  # written by one process only


# ----------------------------------------------------------------------------------------------- processes, the reference runs' options


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
        "mlp_mnist_adam_gradient",
        "mlp_mnist_sam",
        "vit_cifar10",
        "vit_cifar10_gd_prefix",
    }
    assert set(runs) == expected and set(runs) <= {r.name for r in regen["REFERENCE_RUNS"]}
    for run_ in runs.values():
        for quick in (False, True):
            ra, ta = parse_recipe_arguments(run_.recipe, run_.argv(SHARED_DATA, Path("out"), quick))
            assert ra.switch_step < ta.max_steps and ta.report_to in ([], ["none"], "none")
        if SHARED_DATA.is_dir():
            assert all((SHARED_DATA / n).is_file() for n in run_.needs)
    ra, ta = parse_recipe_arguments("mlp_mnist", runs["mlp_mnist_eos"].argv(SHARED_DATA, Path("out")))
    assert (ra.prefix, ra.modes, ta.learning_rate) == ("gd", "gd,dominant-gd,bulk-gd", 0.1)
    _, ta = parse_recipe_arguments("mlp_mnist", runs["mlp_mnist_adam_gradient"].argv(SHARED_DATA, Path("out")))
    assert (ta.optim, ta.subspace_target) == ("adamw_torch", "gradient")
    # the runs made on a lent GPU name their seed: a single-seed run's argv adds none, and Trainer's default is 42
    for name in ("vit_cifar10", "vit_cifar10_gd_prefix"):
        assert parse_recipe_arguments("vit_cifar10", runs[name].argv(SHARED_DATA, Path("out")))[1].seed == 0


def test_run_prints_every_figure_it_wrote(tmp_path, capsys):
    """The toy's trajectory plot is printed beside the summary figure, so the user knows where it went."""
    tiny = ["--max_steps", "6", "--switch_step", "3", "--subspace_alignment_steps", "3",
            "--subspace_refresh_steps", "3", "--modes", "sgd,gd", "--output_dir", str(tmp_path / "toy")]  # fmt: skip
    recipe_args, training_args = parse_recipe_arguments("toy_quadratic", [*tiny, *QUIET])
    run_recipe("toy_quadratic", recipe_args, training_args, print_table=True)
    printed = [line.split()[-1] for line in capsys.readouterr().out.splitlines() if line.startswith("figure:")]
    assert sorted(Path(p).name for p in printed) == ["figure.png", "trajectory.png"]
