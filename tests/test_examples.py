"""``examples/run_subspace_classification.py`` runs offline, end to end, on a tiny local BERT and a local TSV."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "run_subspace_classification.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("run_subspace_classification", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer BERT with a word-level tokenizer trained offline, saved like a Hub checkpoint, and TSV data."""
    from transformers import BertConfig, BertForSequenceClassification

    from hf_subspace.experiments.data import build_tokenizer

    root = tmp_path_factory.mktemp("example")
    texts = ["a good movie", "a bad film", "great acting", "terrible plot", "fine work", "awful story"] * 4
    for name, rows in (("train.tsv", texts), ("dev.tsv", texts[:8])):
        lines = [f"{t}\t{i % 2}" for i, t in enumerate(rows)]
        (root / name).write_text("sentence\tlabel\n" + "\n".join(lines) + "\n")
    tokenizer = build_tokenizer(texts, vocab_size=64, max_length=16)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=2)  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(root / "bert")
    tokenizer.save_pretrained(root / "bert")
    return root


def test_example_trains_evaluates_and_writes_a_card(tiny_checkpoint: Path, tmp_path: Path) -> None:
    root, out = tiny_checkpoint, tmp_path / "out"
    metrics = _load_example().main([
        "--model_name_or_path", str(root / "bert"), "--train_file", str(root / "train.tsv"),
        "--validation_file", str(root / "dev.tsv"), "--output_dir", str(out), "--max_steps", "4",
        "--per_device_train_batch_size", "4", "--optim", "sgd", "--learning_rate", "0.05", "--logging_steps", "1",
        "--subspace_mode", "bulk", "--subspace_k", "2", "--subspace_start_step", "2", "--subspace_refresh_steps", "2",
        "--subspace_alignment_steps", "2", "--hessian_num_samples", "8", "--save_strategy", "no",
        "--report_to", "none", "--use_cpu", "true", "--disable_tqdm", "true",
    ])  # fmt: skip
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and metrics["train_loss"] > 0
    assert (out / "config.json").is_file() and (out / "tokenizer_config.json").is_file()
    card = ModelCard.load(out / "README.md")
    assert "hf-subspace" in card.data.tags and "bulk" in card.text
    # the bulk projection was on from step 2: the applied update has (almost) no part in the dominant subspace
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    chi_update = [e["subspace/chi_k_update"] for e in history if "subspace/chi_k_update" in e and e["step"] > 2]
    assert chi_update and max(chi_update) < 1e-3


def test_example_refuses_ambiguous_data(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one of --dataset_name"):
        _load_example().main(["--model_name_or_path", "x", "--output_dir", str(tmp_path)])


CLM_EXAMPLE = EXAMPLE.with_name("run_subspace_clm.py")
SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"


@pytest.mark.skipif(not (SST2 / "train.tsv").is_file(), reason="the shipped SST-2 copy is not there")
def test_clm_example_trains_a_tiny_gpt2_in_bulk_mode_with_a_basis_tolerance(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("run_subspace_clm", CLM_EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    out = tmp_path / "out"
    metrics = module.main([
        "--model_type", "gpt2", "--config_overrides", "n_embd=8,n_layer=1,n_head=2,n_positions=16",
        "--tokenizer_vocab_size", "100", "--train_file", str(SST2 / "train.tsv"),
        "--validation_file", str(SST2 / "dev.tsv"), "--text_column", "sentence", "--block_size", "16",
        "--max_train_samples", "300", "--max_eval_samples", "40", "--output_dir", str(out), "--max_steps", "4",
        "--per_device_train_batch_size", "8", "--optim", "sgd", "--learning_rate", "0.1", "--logging_steps", "1",
        "--subspace_mode", "bulk", "--subspace_k", "2", "--subspace_start_step", "2", "--subspace_basis_tol", "0.05",
        "--subspace_refresh_steps", "4", "--hessian_num_samples", "16", "--hessian_batch_size", "8",
        "--save_strategy", "no", "--report_to", "none", "--use_cpu", "true", "--disable_tqdm", "true",
    ])  # fmt: skip
    assert metrics["perplexity"] > 1 and metrics["train_loss"] > 0
    assert (out / "config.json").is_file() and (out / "tokenizer_config.json").is_file()
    assert "bulk" in ModelCard.load(out / "README.md").text
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    chi_update = [e["subspace/chi_k_update"] for e in history if "subspace/chi_k_update" in e and e["step"] > 2]
    assert chi_update and max(chi_update) < 1e-3
    assert any("subspace/basis_error_estimate" in e for e in history)  # the certified (tolerance) schedule ran
