"""Tests for dataset loading, the offline tokenizer and the offline accuracy metric."""

from __future__ import annotations

import gzip
import json
import os
import struct
import time
from pathlib import Path

import datasets
import huggingface_hub
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, EvalPrediction

from hf_subspace.experiments import _data_io
from hf_subspace.experiments.data import (
    DatasetLoadError,
    build_tokenizer,
    load_image_classification,
    load_text_classification,
    read_idx,
    tokenize_dataset,
)
from hf_subspace.experiments.evaluation import ACCURACY_METRIC_PATH, compute_accuracy, load_accuracy_metric
from hf_subspace.models import MLPConfig, MLPForImageClassification


@pytest.fixture(scope="module")
def shared_data() -> Path:
    """The offline SST-2/MNIST copies in ``shared/data`` beside the project root; skip when absent."""
    root = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not (root / "mnist" / "train.npz").exists() or not (root / "sst2" / "dev.tsv").exists():
        pytest.skip(f"offline data not found under {root}")
    return root


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make Hub loading fail at once even when ``HF_HUB_OFFLINE`` is not set in the environment."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes", "on"):

        def refuse(*args, **kwargs):
            raise ConnectionError("Couldn't reach the Hub (test: offline)")

        monkeypatch.setattr(_data_io.datasets, "load_dataset", refuse)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _images(n: int, shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8), rng.integers(0, 10, size=n).astype(np.int64)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


# --------------------------------------------------------------------------------------- images, generated files


@pytest.mark.parametrize(
    ("shape", "chw"),
    [((6, 5), (1, 6, 5)), ((6, 5, 3), (3, 6, 5)), ((3, 6, 5), (3, 6, 5))],
)
def test_npz_layouts_first_n_and_per_channel_stats(tmp_path: Path, shape, chw) -> None:
    x, y = _images(40, shape)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    dd, info = load_image_classification(
        None, train_file=tmp_path / "train.npz", num_train=25, num_validation=10, return_info=True
    )
    train, val = dd["train"], dd["validation"]
    assert len(train) == 25 and len(val) == 10
    assert train.column_names == ["pixel_values", "labels"]
    assert train[0]["pixel_values"].shape == chw and train[0]["pixel_values"].dtype == torch.float32
    assert train["labels"][:].tolist() == y[:25].tolist()  # the FIRST 25 examples
    assert val["labels"][:].tolist() == y[25:35].tolist()  # the examples that follow them
    raw = x.astype(np.float32) / 255
    raw = raw[:, None] if raw.ndim == 3 else raw
    raw = raw.transpose(0, 3, 1, 2) if shape[-1] == 3 else raw
    mean, std = raw[:25].mean(axis=(0, 2, 3)), raw[:25].std(axis=(0, 2, 3))
    np.testing.assert_allclose(info["mean"], mean, rtol=1e-5)
    np.testing.assert_allclose(info["std"], std, rtol=1e-5)
    assert info["image_shape"] == list(chw) and info["num_labels"] == int(y[:35].max()) + 1
    pix = train["pixel_values"][:].numpy()
    np.testing.assert_allclose(pix.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(pix.std(axis=(0, 2, 3)), 1, rtol=1e-4)
    expected_val = (raw[25:35] - mean[:, None, None]) / std[:, None, None]
    np.testing.assert_allclose(val["pixel_values"][:].numpy(), expected_val, rtol=1e-4, atol=1e-5)


def test_global_and_no_standardisation_and_seed(tmp_path: Path) -> None:
    x, y = _images(30, (4, 4, 3))
    np.savez(tmp_path / "data.npz", x=x, y=y)
    dd, info = load_image_classification(
        str(tmp_path / "data.npz"), num_train=20, standardize="global", return_info=True
    )
    pix = dd["train"]["pixel_values"][:].numpy()
    assert abs(pix.mean()) < 1e-5 and pix.std() == pytest.approx(1, rel=1e-4)
    assert len(set(info["mean"])) == 1
    dd = load_image_classification(str(tmp_path / "data.npz"), num_train=20, standardize=None)
    np.testing.assert_allclose(dd["train"]["pixel_values"][0].numpy(), x[0].transpose(2, 0, 1) / 255, rtol=1e-6)
    a = load_image_classification(str(tmp_path / "data.npz"), num_train=20, seed=3)["train"]["labels"][:].tolist()
    b = load_image_classification(str(tmp_path / "data.npz"), num_train=20, seed=3)["train"]["labels"][:].tolist()
    assert a == b
    with pytest.raises(ValueError, match="standardize"):
        load_image_classification(str(tmp_path / "data.npz"), standardize="minmax")


def test_idx_validation_file_and_folder(tmp_path: Path) -> None:
    x, y = _images(20, (5, 5))
    vx, vy = _images(8, (5, 5), seed=1)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", vx)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", vy)
    np.testing.assert_array_equal(read_idx(tmp_path / "t10k-images-idx3-ubyte.gz"), vx)
    dd = load_image_classification(
        None, train_file=tmp_path / "train.npz", validation_file=tmp_path / "t10k-images-idx3-ubyte.gz", num_train=10
    )
    assert len(dd["train"]) == 10 and dd["validation"]["labels"][:].tolist() == vy.tolist()
    from_folder = load_image_classification(str(tmp_path), num_train=10, num_validation=5)
    assert from_folder["validation"]["labels"][:].tolist() == vy[:5].tolist()
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetLoadError, match="labels"):
        load_image_classification(
            None, train_file=tmp_path / "train.npz", validation_file=tmp_path / "t10k-images-idx3-ubyte.gz"
        )


def test_validation_size_the_data_cannot_hold_is_refused(tmp_path: Path) -> None:
    """Issue 20: --num_train 5000 --num_validation 1000 on a 5,000-image npz without --validation_file used to give 0
    validation examples without a word; every source that cannot fill --num_validation is refused by name."""
    x, y = _images(50, (4, 4))
    np.savez(tmp_path / "mnist_5k.npz", x=x, y=y)
    np.savez(tmp_path / "test.npz", x=x[:8], y=y[:8])
    with pytest.raises(
        DatasetLoadError, match=r"--num_validation 10 .*mnist_5k\.npz.*50 examples.*leaves 0.*--num_train"
    ):
        load_image_classification(None, train_file=tmp_path / "mnist_5k.npz", num_train=50, num_validation=10)
    with pytest.raises(DatasetLoadError, match=r"leaves 5:.*--validation_file"):  # fewer than asked, not only none
        load_image_classification(None, train_file=tmp_path / "mnist_5k.npz", num_train=45, num_validation=10)
    with pytest.raises(DatasetLoadError, match=r"--num_validation 10 .*test\.npz.* leaves 8"):
        load_image_classification(
            None, train_file=tmp_path / "mnist_5k.npz", validation_file=tmp_path / "test.npz", num_validation=10
        )
    with pytest.raises(DatasetLoadError, match=r"--num_validation 500 .*leaves 297"):
        load_image_classification("digits", num_train=1500, num_validation=500)
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\nok \t1\n", encoding="utf-8")
    (tmp_path / "train.tsv").write_text("sentence\tlabel\na\t0\nb\t1\n", encoding="utf-8")
    with pytest.raises(DatasetLoadError, match=r"--num_validation 2 .*dev\.tsv.* leaves 1"):
        load_text_classification(None, train_file=tmp_path / "train.tsv", validation_file=tmp_path / "dev.tsv",
                                 num_validation=2)  # fmt: skip
    # exactly what the source holds is fine
    dd = load_image_classification(None, train_file=tmp_path / "mnist_5k.npz", num_train=40, num_validation=10)
    assert (len(dd["train"]), len(dd["validation"])) == (40, 10)


def test_csv_parquet_and_saved_dataset_images(tmp_path: Path) -> None:
    x, y = _images(12, (2, 2))
    table = {"label": y.tolist(), **{f"p{i}": x.reshape(12, -1)[:, i].tolist() for i in range(4)}}
    datasets.Dataset.from_dict(table).to_csv(str(tmp_path / "train.csv"), index=False)
    datasets.Dataset.from_dict(table).to_parquet(str(tmp_path / "train.parquet"))
    for name in ("train.csv", "train.parquet"):
        dd = load_image_classification(None, train_file=tmp_path / name, num_train=8, standardize=None)
        assert dd["train"][0]["pixel_values"].shape == (1, 2, 2)
        np.testing.assert_allclose(dd["train"][1]["pixel_values"].numpy().ravel(), x[1].ravel() / 255, rtol=1e-6)
        assert dd["validation"]["labels"][:].tolist() == y[8:].tolist()
    saved = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"image": x[:8].tolist(), "label": y[:8].tolist()}),
            "test": datasets.Dataset.from_dict({"image": x[8:].tolist(), "label": y[8:].tolist()}),
        }
    )
    saved.save_to_disk(str(tmp_path / "saved"))
    dd = load_image_classification(str(tmp_path / "saved"), num_train=5)
    assert len(dd["train"]) == 5 and dd["validation"]["labels"][:].tolist() == y[8:].tolist()


def test_digits_offline() -> None:
    dd, info = load_image_classification("digits", num_train=1000, num_validation=200, return_info=True)
    assert len(dd["train"]) == 1000 and len(dd["validation"]) == 200
    assert dd["train"][0]["pixel_values"].shape == (1, 8, 8) and info["num_labels"] == 10
    again = load_image_classification("digits", num_train=1000, num_validation=200)
    assert again["validation"]["labels"][:].tolist() == dd["validation"]["labels"][:].tolist()
    full = load_image_classification("digits")
    assert len(full["train"]) + len(full["validation"]) == 1797
    model = MLPForImageClassification(MLPConfig(input_size=64))
    batch = dd["train"][:8]
    assert model(pixel_values=batch["pixel_values"], labels=batch["labels"]).loss.ndim == 0


def test_missing_files_and_offline_hub_names(tmp_path: Path, offline_hub) -> None:
    missing = tmp_path / "nope" / "train.npz"
    with pytest.raises(DatasetLoadError, match="not found") as err:
        load_image_classification(None, train_file=missing)
    assert str(missing) in str(err.value)
    with pytest.raises(DatasetLoadError, match="not found"):
        load_image_classification(str(missing))
    with pytest.raises(DatasetLoadError, match=r"validation file not found"):
        load_text_classification(None, train_file=missing, validation_file=tmp_path / "dev.tsv")
    assert issubclass(DatasetLoadError, ValueError)
    for loader, name in [(load_image_classification, "mnist"), (load_image_classification, "uoft-cs/cifar10"),
                         (load_text_classification, "sst2"), (load_text_classification, "glue")]:  # fmt: skip
        start = time.perf_counter()
        with pytest.raises(DatasetLoadError) as err:
            loader(name)
        message = str(err.value)
        assert time.perf_counter() - start < 5
        assert f"Could not load '{name}'" in message and "--train_file" in message and "datasets folder" in message


# --------------------------------------------------------------------------------------- text, generated files


def test_tsv_quote_handling_off_and_first_n(tmp_path: Path) -> None:
    rows = ['a "quoted word in a sentence ', "it 's `` great '' ", '"starts with a quote ', "plain text "]
    lines = ["sentence\tlabel", *[f"{s}\t{i % 2}" for i, s in enumerate(rows)]]
    (tmp_path / "train.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\nok \t1\n", encoding="utf-8")
    dd = load_text_classification(str(tmp_path))
    assert dd["train"]["sentence"][:] == [s.strip() for s in rows]
    assert dd["train"]["label"][:] == [0, 1, 0, 1]
    assert dd["validation"]["sentence"][:] == ["ok"]
    dd = load_text_classification(None, train_file=tmp_path / "train.tsv", num_train=2)
    assert len(dd["train"]) == 2 and len(dd["validation"]) == 0


def test_csv_json_and_saved_text(tmp_path: Path) -> None:
    data = {"text": ["good", "bad", 'so "so"'], "target": [1, 0, 1], "extra": [1, 2, 3]}
    datasets.Dataset.from_dict(data).to_csv(str(tmp_path / "train.csv"), index=False)
    with (tmp_path / "train.jsonl").open("w") as handle:
        for t, lab in zip(data["text"], data["target"]):
            handle.write(json.dumps({"text": t, "target": lab}) + "\n")
    for name in ("train.csv", "train.jsonl"):
        dd = load_text_classification(None, train_file=tmp_path / name, text_column="text", label_column="target")
        assert dd["train"].column_names == ["sentence", "label"]
        assert dd["train"]["sentence"][:] == data["text"] and dd["train"]["label"][:] == [1, 0, 1]
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(data), "validation": datasets.Dataset.from_dict(data)}
    ).save_to_disk(str(tmp_path / "saved"))
    dd = load_text_classification(str(tmp_path / "saved"), text_column="text", label_column="target", num_validation=1)
    assert len(dd["train"]) == 3 and len(dd["validation"]) == 1
    with pytest.raises(DatasetLoadError, match=r"no label column.*--label_column") as err:  # 'text' is found
        load_text_classification(None, train_file=tmp_path / "train.csv", text_column="review", label_column="stars")
    assert "no text column" not in str(err.value)
    datasets.Dataset.from_dict({"body": ["ok"], "target": [1]}).to_json(str(tmp_path / "other.jsonl"))
    with pytest.raises(DatasetLoadError, match=r"no text column.*--text_column"):
        load_text_classification(None, train_file=tmp_path / "other.jsonl", text_column="review", label_column="target")


def test_tokenizer_offline_training_save_and_tokenize(tmp_path: Path, offline_hub) -> None:
    texts = ["A good movie .", "a bad movie", "good , good acting", "bad plot"]
    tok = build_tokenizer(texts, vocab_size=50, max_length=8)
    assert tok.pad_token_id == 0 and tok.convert_tokens_to_ids("[UNK]") == 1
    ids = tok("good movie zebra")["input_ids"]
    assert ids[-1] == 1 and 0 not in ids  # unknown word → [UNK]; lower-cased vocabulary
    tok.save_pretrained(tmp_path / "tok")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert reloaded("A good movie")["input_ids"] == tok("A good movie")["input_ids"]
    assert build_tokenizer([], name_or_path=str(tmp_path / "tok")).get_vocab() == tok.get_vocab()
    fallback = build_tokenizer(texts, name_or_path="no-such-org/no-such-tokenizer", vocab_size=50)
    assert fallback.get_vocab() == tok.get_vocab()
    ds = datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"sentence": texts, "label": [1, 0, 1, 0]}),
         "validation": datasets.Dataset.from_dict({"sentence": ["good"], "label": [1]})}
    )  # fmt: skip
    enc = tokenize_dataset(ds, tok, max_length=6)
    assert enc["train"].column_names == ["input_ids", "attention_mask", "labels"]
    row = enc["train"][1]
    assert len(row["input_ids"]) == 6 and row["attention_mask"] == [1, 1, 1, 0, 0, 0]
    assert row["input_ids"][3:] == [0, 0, 0] and row["labels"] == 0
    single = tokenize_dataset(ds["train"], tok, max_length=6)
    assert single["input_ids"][:] == enc["train"]["input_ids"][:]


# --------------------------------------------------------------------------------------- metric


def test_accuracy_metric_offline_and_compute_accuracy() -> None:
    import evaluate

    metric = evaluate.load(str(ACCURACY_METRIC_PATH))
    assert metric.compute(predictions=[0, 1, 2, 1], references=[0, 1, 1, 1]) == {"accuracy": 0.75}
    assert metric.compute(predictions=[0, 1], references=[0, 0], normalize=False)["accuracy"] == 1.0
    assert load_accuracy_metric(prefer_hub=False).compute(predictions=[1], references=[1])["accuracy"] == 1.0
    if os.environ.get("HF_EVALUATE_OFFLINE") and os.environ.get("HF_HUB_OFFLINE"):
        assert load_accuracy_metric().compute(predictions=[1, 0], references=[1, 1])["accuracy"] == 0.5
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 1.0], [5.0, 0.0, 0.0]])
    labels = np.array([0, 1, 1, 2])
    assert compute_accuracy((logits, labels)) == {"accuracy": 0.5}
    assert compute_accuracy(EvalPrediction(predictions=logits, label_ids=labels))["accuracy"] == 0.5
    one_hot = np.eye(3)[labels]
    assert compute_accuracy((logits, one_hot))["accuracy"] == 0.5
    assert compute_accuracy(((logits, np.zeros((4, 2))), labels))["accuracy"] == 0.5
    assert compute_accuracy((np.array([0, 1, 1, 0]), labels))["accuracy"] == 0.75
    assert compute_accuracy((logits.tolist(), labels.tolist()))["accuracy"] == 0.5
    assert compute_accuracy((torch.tensor(logits), torch.tensor(labels)))["accuracy"] == 0.5


# --------------------------------------------------------------------------------------- shared offline copies


def test_shared_mnist(shared_data: Path) -> None:
    mnist = shared_data / "mnist"
    dd, info = load_image_classification(
        None,
        train_file=mnist / "train.npz",
        validation_file=mnist / "t10k-images-idx3-ubyte.gz",
        num_train=5000,
        return_info=True,
    )
    assert len(dd["train"]) == 5000 and len(dd["validation"]) == 10_000
    with np.load(mnist / "train.npz") as npz:
        assert dd["train"]["labels"][:].tolist() == npz["y"][:5000].tolist()
    assert np.bincount(dd["validation"]["labels"][:].numpy()).tolist()[:3] == [980, 1135, 1032]
    assert info["mean"][0] == pytest.approx(0.1307, abs=0.003) and info["std"][0] == pytest.approx(0.3081, abs=0.003)
    assert dd["train"][0]["pixel_values"].shape == (1, 28, 28)
    folder = load_image_classification(str(mnist), num_train=100, num_validation=50)
    assert folder["validation"]["labels"][:].tolist() == dd["validation"]["labels"][:50].tolist()


def test_shared_sst2(shared_data: Path) -> None:
    dd = load_text_classification(str(shared_data / "sst2"), num_train=1000)
    assert len(dd["train"]) == 1000 and len(dd["validation"]) == 872
    assert dd["train"][0] == {"sentence": "hide new secretions from the parental units", "label": 0}
    assert sorted(np.bincount(dd["validation"]["label"][:]).tolist()) == [428, 444]
    assert any("``" in s or "''" in s for s in dd["train"]["sentence"][:])
    tok = build_tokenizer(dd["train"]["sentence"][:], vocab_size=3000, max_length=64)
    enc = tokenize_dataset(dd, tok, max_length=64)
    assert len(enc["validation"][0]["input_ids"]) == 64
