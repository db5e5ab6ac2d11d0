"""The ``hf-subspace`` command: subcommands, error exits, a tiny quick start, and ``spectrum``."""

from __future__ import annotations

import json

import pytest

from hf_subspace import cli
from hf_subspace.experiments import quickstart


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
