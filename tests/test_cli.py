"""The ``hf-subspace`` command: subcommands, one-line errors, help texts, a tiny quick start and its README block,
and ``spectrum``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hf_subspace import cli
from hf_subspace.experiments import quickstart
from hf_subspace.experiments.quickstart import README_BEGIN, README_END, render_readme_block, update_readme
from hf_subspace.experiments.recipes import parse_recipe_arguments

REPO = Path(__file__).resolve().parent.parent


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in ("quickstart", "run", "spectrum"):
        assert name in out
    assert cli.main(["run", "no_such_recipe"]) == 2
    assert "choose from" in capsys.readouterr().err
    from hf_subspace.experiments.recipes import RECIPES

    assert tuple(RECIPES) == cli.RECIPE_NAMES


def test_new_subcommands_plug_in(capsys):
    def add(parser):
        parser.add_argument("--flag", default="x")

    cli.register_command("echo-test", "test command", add, lambda ns: print("echo", ns.flag) or 0)
    cli.register_forwarding_command("fwd-test", "forwarded", "hf_subspace.cli:main")
    try:
        assert cli.main(["echo-test", "--flag", "y"]) == 0
        assert "echo y" in capsys.readouterr().out
        with pytest.raises(SystemExit) as exc:  # --help reaches the target's own parser
            cli.main(["fwd-test", "--help"])
        assert exc.value.code == 0 and "quickstart" in capsys.readouterr().out
    finally:
        cli.COMMANDS.pop("echo-test")
        cli.COMMANDS.pop("fwd-test")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--modes", "sgd,sideways"], "unknown mode"),
        (["--subspace_k", "2"], "subspace_k"),
        ([], "overwrite_output_dir"),
    ],
)
def test_run_errors_exit_2_and_touch_nothing(tmp_path, capsys, options, message):
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    overwrite = ["--overwrite_output_dir"] if options else []
    code = cli.main(["run", "toy_quadratic", "--output_dir", str(out), *overwrite, *options, "--report_to", "none"])
    assert code == 2
    assert message in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["summary.json"] and (out / "summary.json").read_text() == "{}"


def test_run_then_spectrum(tmp_path, capsys):
    out = tmp_path / "toy"
    code = cli.main([
        "run", "toy_quadratic", "--max_steps", "40", "--switch_step", "20", "--subspace_alignment_steps", "10",
        "--modes", "sgd,dominant", "--output_dir", str(out), "--disable_tqdm", "true",
    ])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "final/switch" in printed and "dominant" in printed
    assert (out / "trajectory.png").is_file() and (out / "figure.png").is_file()
    # the Hessian of the toy valley is diag(a, b) = diag(1000, 1): the top eigenvalue is exact
    assert cli.main(["spectrum", str(out / "sgd"), "--k", "1", "--output_dir", str(tmp_path / "spec")]) == 0
    record = json.loads((tmp_path / "spec" / "spectrum.json").read_text())
    assert record["recipe"] == "toy_quadratic" and record["eigenvalues"][0] == pytest.approx(1000.0, rel=1e-4)
    assert (tmp_path / "spec" / "spectrum.png").is_file()
    assert "trace" not in record and "density" not in record
    # --graph_cache_bytes 0 rebuilds each batch's graph for every product; the default keeps it for the whole solve
    spec0 = tmp_path / "spec0"
    assert (
        cli.main(["spectrum", str(out / "sgd"), "--k", "1", "--graph_cache_bytes", "0", "--output_dir", str(spec0)])
        == 0
    )
    no_reuse = json.loads((spec0 / "spectrum.json").read_text())
    assert no_reuse["graph_cache_bytes"] == 0 and record["graph_cache_bytes"] is None
    assert no_reuse["eigenvalues"] == pytest.approx(record["eigenvalues"], rel=1e-6)
    assert no_reuse["hessian_vector_products"] == record["hessian_vector_products"]
    assert no_reuse["graphs_built"] > record["graphs_built"] >= 1
    assert cli.main(["spectrum", str(out / "sgd"), "--graph_cache_bytes", "-1", "--output_dir", str(spec0 / "x")]) == 2
    assert "--graph_cache_bytes=-1 must be >= 0" in capsys.readouterr().err and not (spec0 / "x").exists()
    spec2 = tmp_path / "spec2"
    args = [
        "spectrum",
        str(out / "sgd"),
        "--k",
        "1",
        "--trace",
        "--density",
        "--log_density",
        "--output_dir",
        str(spec2),
    ]
    assert cli.main(args) == 0
    record = json.loads((spec2 / "spectrum.json").read_text())
    assert record["trace"]["estimate"] == pytest.approx(1001.0, rel=1e-4)  # tr diag(1000, 1); d = 2: exact
    assert record["density"]["mean_eigenvalue"] == pytest.approx(500.5, rel=0.5)
    assert (spec2 / "spectral_density.png").is_file() and (spec2 / "spectral_density.npz").is_file()
    assert cli.main(["spectrum", str(tmp_path / "nothing")]) == 2


def test_quickstart_tiny(tmp_path, monkeypatch, capsys):
    out = tmp_path / "qs"
    out.mkdir()
    (out / "quickstart.json").write_text("{}")  # an earlier quick start may be replaced without a flag
    monkeypatch.setattr(quickstart, "QUICKSTART_MLP", [
        "--dataset_name", "digits", "--num_train", "120", "--num_validation", "30", "--hidden_sizes", "8",
        "--learning_rate", "0.05", "--switch_step", "4", "--max_steps", "8", "--subspace_alignment_steps", "4",
    ])  # fmt: skip
    code = cli.main(["quickstart", "--output_dir", str(out), "--skip_toy", "--no_progress", "--threads", "1"])
    printed = capsys.readouterr().out
    # the exit status says whether the digits run showed the paper's result (a tiny run need not): 0 iff all ✓
    marks = [line.strip()[0] for line in printed.splitlines() if line.strip().startswith(("✓", "✗"))]
    assert len(marks) == 2 and code == (0 if set(marks) == {"✓"} else 1)
    assert "mlp_digits (digits)" in printed and "Dom-SGD fails to train" in printed
    report = json.loads((out / "quickstart.json").read_text())
    assert (out / "mlp_digits" / "summary.json").is_file() and (out / "mlp_digits" / "figure.png").is_file()
    assert "mlp_digits" in report["runs"] and report["seconds"] > 0

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.txt").write_text("keep")
    assert cli.main(["quickstart", "--output_dir", str(foreign)]) == 2
    assert [p.name for p in foreign.iterdir()] == ["data.txt"]


def test_cards_runs_the_checkouts_regenerate_script(tmp_path, capsys):
    """`hf-subspace cards` loads model_cards/regenerate.py of a checkout (--repo, default: the current folder)."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    with pytest.raises(SystemExit) as exc:  # the script's own parser: an unknown reference run
        cli.main(["cards", "--repo", str(repo), "--only", "nope"])
    assert exc.value.code == 2 and "unknown run(s) nope" in capsys.readouterr().err
    # index only: rebuilt from stored summaries into a fresh folder (nothing is run)
    assert cli.main(["cards", f"--repo={repo}", "--index_only", "--output_root", str(tmp_path / "cards")]) == 0
    assert "# Reference runs" in (tmp_path / "cards" / "README.md").read_text()
    assert cli.main(["cards", "--repo", str(tmp_path)]) == 2  # no checkout there
    assert "model_cards/regenerate.py not found" in capsys.readouterr().err


def test_spectrum_uses_the_loss_the_run_trained(tmp_path, monkeypatch):
    """finetune --loss_type mse trains a Hub classifier with an MSE compute_loss_func: `spectrum` must take the
    Hessian of that MSE, not of the model's own cross-entropy (dense float64 references of both)."""
    import torch
    from torch.func import functional_call, hessian
    from transformers import BertConfig, BertForSequenceClassification

    from hf_subspace.experiments import spectrum as spectrum_module
    from hf_subspace.experiments.data import build_tokenizer

    texts = ["a good movie", "a bad film", "great acting", "terrible plot", "fine", "awful"] * 2
    (tmp_path / "train.csv").write_text("sentence,label\n" + "\n".join(f"{t},{i % 2}" for i, t in enumerate(texts)))
    tokenizer = build_tokenizer(texts, vocab_size=16, max_length=4)
    torch.manual_seed(0)
    bert = BertForSequenceClassification(BertConfig(
        vocab_size=len(tokenizer), hidden_size=4, num_hidden_layers=1, num_attention_heads=1, intermediate_size=4,
        max_position_embeddings=4, type_vocab_size=1, num_labels=2, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, attn_implementation="eager"))  # fmt: skip
    with torch.no_grad():  # larger logits: the CE and MSE Hessians differ clearly
        bert.classifier.weight.mul_(30.0)
    model_dir = tmp_path / "model"
    bert.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    recipe_args = {"train_file": str(tmp_path / "train.csv"), "loss_type": "mse", "max_seq_length": 4}
    (model_dir / "hf_subspace_experiment.json").write_text(
        json.dumps({"recipe": "finetune", "recipe_args": recipe_args})
    )
    seen = {}

    class Recording(spectrum_module.HessianOperator):
        def __init__(self, model, batches, loss_fn=None, **kwargs):
            seen.update(model=model, batches=batches)
            super().__init__(model, batches, loss_fn, **kwargs)

    monkeypatch.setattr(spectrum_module, "HessianOperator", Recording)
    args = ["spectrum", str(model_dir), "--k", "1", "--num_samples", "12", "--method", "lanczos"]
    assert cli.main([*args, "--output_dir", str(tmp_path / "spec")]) == 0
    record = json.loads((tmp_path / "spec" / "spectrum.json").read_text())

    model = seen["model"].double().eval()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])
    shapes = [p.shape for p in model.parameters() if p.requires_grad]
    batches = [{k: v.to("cpu") for k, v in b.items()} for b in seen["batches"]]
    labels = torch.cat([b["labels"] for b in batches])

    def logits(theta):
        params = dict(zip(names, (t.reshape(s) for t, s in zip(theta.split([s.numel() for s in shapes]), shapes))))
        inputs = [{k: v for k, v in b.items() if k != "labels"} for b in batches]
        return torch.cat([functional_call(model, params, (), b).logits for b in inputs])

    def mse(theta):
        target = torch.nn.functional.one_hot(labels, 2).double()
        return 0.5 * ((logits(theta) - target) ** 2).sum(-1).mean()

    def cross_entropy(theta):
        return torch.nn.functional.cross_entropy(logits(theta), labels)

    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):  # forward AD through attention
        top_mse = float(torch.linalg.eigvalsh(hessian(mse)(flat))[-1])
        top_ce = float(torch.linalg.eigvalsh(hessian(cross_entropy)(flat))[-1])
    assert abs(top_mse - top_ce) > 0.1 * top_mse  # the test tells the two losses apart
    assert record["eigenvalues"][0] == pytest.approx(top_mse, rel=2e-3)
    assert record["loss"].startswith("MSE")  # the recipe's description of the loss it trained
    # --loss: the model's own loss (here BERT's cross-entropy), named as such in spectrum.json
    assert cli.main([*args, "--loss", "model", "--output_dir", str(tmp_path / "own")]) == 0
    own = json.loads((tmp_path / "own" / "spectrum.json").read_text())
    assert own["eigenvalues"][0] == pytest.approx(top_ce, rel=2e-3)
    assert own["loss"] == "model's own loss (BertForSequenceClassification)"


# ----------------------------------------------------------------------------------------------- a run from a newcomer's folder, one-line errors, help texts, the README block


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


def test_bad_recipe_options_fail_before_torch_is_imported(tmp_path):
    """A wrong branch name, prefix, switch rule or missing file is refused before torch and the data stack load
    (the error took seconds of imports to appear)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HF_SUBSPACE_DEBUG", None)
    cases = [["--modes", "sgd,dom"], ["--prefix", "adam"], ["--switch_rule", "never"], ["--train_file", "nope.npz"]]
    code = (
        "import sys\nfrom hf_subspace import cli\n"
        f"for options in {cases!r}:\n"
        f"    assert cli.main(['run', 'mlp_mnist', '--output_dir', {str(tmp_path / 'o')!r}, *options]) == 2\n"
        "assert 'torch' not in sys.modules, 'torch was imported before the error'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 4 and "unknown mode 'dom'" in errors[0] and "nope.npz" in errors[3]
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
