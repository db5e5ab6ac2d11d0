"""Dataset loading for the recipes: Hugging Face Hub names or local files, and an offline tokenizer.

Images come back as ``DatasetDict(train, validation)`` with columns ``pixel_values`` (float32 ``[C, H, W]``,
torch format) and ``labels`` (int64); texts as ``DatasetDict(train, validation)`` with columns ``sentence`` and
``label``. The training subset is always the FIRST ``num_train`` examples (the paper uses the first 5,000).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa

from ._data_io import (
    IMAGE_HUB_NAMES,
    TEXT_HUB_NAMES,
    DatasetLoadError,
    check_file,
    missing_columns_message,
    read_idx,
    read_table,
    read_tsv,
    resolve_sources,
)
from ._hub import ensure_hub_or_offline

__all__ = [
    "DatasetLoadError",
    "build_tokenizer",
    "load_image_classification",
    "load_text_classification",
    "read_idx",
    "tokenize_dataset",
]

logger = logging.getLogger(__name__)

_IMAGE_COLUMNS = ("pixel_values", "image", "img", "x")
_LABEL_COLUMNS = ("labels", "label", "fine_label", "y")

# ----------------------------------------------------------------------------------------------- images


def _dataset_arrays(ds: datasets.Dataset, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    cols = ds.column_names
    label_col = next((c for c in _LABEL_COLUMNS if c in cols), None)
    if label_col is None:
        raise DatasetLoadError(
            f"the data has no labels: none of the label columns {', '.join(_LABEL_COLUMNS)} is among its columns "
            f"{cols}; rename its label column to 'label', or pass labelled data (--train_file / --validation_file)"
        )
    image_col = next((c for c in _IMAGE_COLUMNS if c in cols), None)
    if image_col is not None:
        x = np.stack([np.asarray(v) for v in ds.with_format(None)[image_col]])
    else:
        pixels = ds.select_columns([c for c in cols if c != label_col]).with_format("numpy")[:]
        x = np.stack(list(pixels.values()), axis=1)
    return x, np.asarray(ds.with_format("numpy")[label_col][:], dtype=np.int64)


def _image_arrays(source: Any, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(source, datasets.Dataset):
        return _dataset_arrays(source, limit)
    path: Path = source
    if path.suffix == ".npz":
        with np.load(path) as npz:
            keys = next((k for k in (("x", "y"), ("images", "labels"), ("X", "y")) if set(k) <= set(npz.files)), None)
            if keys is None:
                raise DatasetLoadError(f"{path} must hold arrays 'x' and 'y'; it has {npz.files}")
            x, y = npz[keys[0]], npz[keys[1]]
    elif "idx" in path.name:
        label_path = path.with_name(path.name.replace("images-idx3", "labels-idx1"))
        if label_path == path or not label_path.exists():
            raise DatasetLoadError(f"labels for IDX images {path} not found (expected {label_path})")
        x, y = read_idx(path), read_idx(label_path)
    else:
        return _dataset_arrays(read_table(path), limit)
    if len(x) != len(y):
        raise DatasetLoadError(f"{path}: {len(x)} images but {len(y)} labels")
    stop = len(x) if limit is None else min(limit, len(x))
    return np.asarray(x[:stop]), np.asarray(y[:stop], dtype=np.int64)


def _to_nchw(x: np.ndarray) -> np.ndarray:
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        channels_last = x.shape[-1] in (1, 3, 4) and (x.shape[1] not in (1, 3, 4) or x.shape[-1] < x.shape[1])
        return x.transpose(0, 3, 1, 2) if channels_last else x
    if x.ndim == 2:
        d = x.shape[1]
        for c in (1, 3):
            side = math.isqrt(d // c)
            if side * side * c == d:
                return x.reshape(len(x), c, side, side)
        return x.reshape(len(x), 1, 1, d)
    raise DatasetLoadError(f"cannot interpret image array of shape {x.shape}")


def _as_float(x: np.ndarray, scale: float | None) -> np.ndarray:
    x = _to_nchw(x)
    if scale is None:
        scale = 255.0 if np.issubdtype(x.dtype, np.integer) else 1.0
    return np.ascontiguousarray(x, dtype=np.float32) / np.float32(scale)


def _image_dataset(x: np.ndarray, y: np.ndarray) -> datasets.Dataset:
    values: pa.Array = pa.array(x.reshape(-1), type=pa.float32())
    for size in reversed(x.shape[1:]):
        values = pa.FixedSizeListArray.from_arrays(values, size)
    table = pa.table({"pixel_values": values, "labels": pa.array(y, type=pa.int64())})
    return datasets.Dataset(table).with_format("torch")


def _where(source: Any) -> str:
    return f"`{source.name}`" if isinstance(source, Path) else "the dataset"


def _check_validation_size(requested: int | None, available: int, where: str, held_out: bool = False) -> None:
    """Refuse a ``--num_validation`` the validation source cannot fill (training would otherwise validate on fewer
    examples than asked, or on none, without a word). ``held_out``: validation is what follows the training subset."""
    if requested is not None and available < requested:
        fix = f"pass a --validation_file holding at least {requested:,} examples or lower --num_validation"
        raise DatasetLoadError(
            f"--num_validation {requested} asks for {requested:,} validation examples, but {where} leaves "
            f"{available:,}: {fix}{' or --num_train' if held_out else f' to {available:,}'}"
        )


def _digits_arrays(validation_file: str | Path | None, num_validation: int | None) -> tuple[Any, Any, Any, Any]:
    """scikit-learn's 8×8 digits (values 0–16) and, when given, a validation file's arrays."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    val_x = val_y = None
    if validation_file:
        val_x, val_y = _image_arrays(check_file(validation_file, "validation file"), num_validation)
        _check_validation_size(num_validation, len(val_x), str(validation_file))
    return digits.images.astype(np.float32), digits.target.astype(np.int64), val_x, val_y


def _standardize(
    train_f: np.ndarray, val_f: np.ndarray, standardize: str | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Both image arrays ``[n, c, h, w]`` standardised with the training subset's statistics (per channel, global, or
    not at all: mean 0 and std 1 returned); returns ``(train, validation, mean [c], std [c])``."""
    axes = (0, 2, 3) if standardize == "per_channel" else None
    channels = train_f.shape[1]
    mean, std = np.zeros(channels, np.float32), np.ones(channels, np.float32)
    if standardize is not None:
        mean = np.broadcast_to(train_f.mean(axis=axes, dtype=np.float64), (channels,)).astype(np.float32)
        std = np.broadcast_to(train_f.std(axis=axes, dtype=np.float64), (channels,)).astype(np.float32)
        std = np.where(std > 1e-8, std, 1.0).astype(np.float32)
        train_f = (train_f - mean[:, None, None]) / std[:, None, None]
        val_f = (val_f - mean[:, None, None]) / std[:, None, None]
    return train_f, val_f, mean, std


def load_image_classification(
    name_or_path: str | None,
    *,
    train_file: str | Path | None = None,
    validation_file: str | Path | None = None,
    num_train: int | None = None,
    num_validation: int | None = None,
    split: str = "train",
    standardize: str | None = "per_channel",
    seed: int | None = None,
    return_info: bool = False,
) -> datasets.DatasetDict | tuple[datasets.DatasetDict, dict[str, Any]]:
    """Load an image classification data set as float ``[C, H, W]`` tensors.

    Sources: a Hub name (``"mnist"``, ``"cifar10"``, ``"ylecun/mnist"``, ...); ``"digits"`` (scikit-learn's offline
    8×8 digits); a local ``.npz`` (arrays ``x`` uint8 ``[N,H,W]``/``[N,H,W,C]``/``[N,C,H,W]`` and ``y``), an IDX
    ``*-images-idx3-ubyte.gz`` (labels file beside it), a CSV/JSON/parquet file (an image column or one column per
    pixel, plus ``label``), a ``save_to_disk`` folder, or a folder holding ``train.*`` and ``test.*``/``t10k-*``.
    Without a validation source the validation set is the examples that follow the training subset.

    Args:
        name_or_path: Hub name, ``"digits"``, a file or a folder; may be ``None`` when ``train_file`` is given.
        train_file: local training file (overrides ``name_or_path``).
        validation_file: local validation file (an npz, an IDX images file, a table, ...).
        num_train: keep the FIRST ``num_train`` training examples (after the optional shuffle).
        num_validation: keep the first ``num_validation`` validation examples.
        split: training split of a Hub data set or a saved ``DatasetDict``.
        standardize: ``"per_channel"`` or ``"global"`` (statistics of the training subset), or ``None``
            (pixels only scaled to [0, 1]).
        seed: when given, shuffle the training pool with this seed before taking the first ``num_train``.
        return_info: also return ``{"mean", "std", "num_labels", "image_shape"}``.

    Returns:
        ``DatasetDict`` with ``train`` and ``validation``, plus the info dict when ``return_info``.

    Raises:
        DatasetLoadError: unreadable source, missing file, Hub name unavailable (offline), or fewer validation
            examples than ``num_validation`` (in ``validation_file``, or after the training subset without one).
        ValueError: unknown ``standardize`` value.
    """
    if standardize not in ("per_channel", "global", None):
        raise ValueError(f"standardize must be 'per_channel', 'global' or None, got {standardize!r}")
    scale = None
    if name_or_path == "digits" and not train_file:
        train_x, train_y, val_x, val_y = _digits_arrays(validation_file, num_validation)
        where, scale = "scikit-learn's digits", 16.0
    else:
        train_src, val_src = resolve_sources(name_or_path, train_file, validation_file, split, IMAGE_HUB_NAMES, "image")
        pool_limit = None if (seed is not None or val_src is None) else num_train
        train_x, train_y = _image_arrays(train_src, pool_limit)
        where = _where(train_src)
        val_x, val_y = _image_arrays(val_src, num_validation) if val_src is not None else (None, None)
        if val_src is not None:
            _check_validation_size(num_validation, len(val_x), _where(val_src))
    if seed is not None:
        order = np.random.default_rng(seed).permutation(len(train_x))
        train_x, train_y = train_x[order], train_y[order]
    n_train = len(train_x) if num_train is None else min(num_train, len(train_x))
    if val_x is None:
        if num_train is None:
            n_train = len(train_x) - max(1, len(train_x) // 10)
        stop = len(train_x) if num_validation is None else n_train + num_validation
        held_out = f"{where} ({len(train_x):,} examples, --num_train {n_train} of them; no --validation_file)"
        _check_validation_size(num_validation, len(train_x) - n_train, held_out, held_out=True)
        val_x, val_y = train_x[n_train:stop], train_y[n_train:stop]
    train_x, train_y = train_x[:n_train], train_y[:n_train]
    if n_train == 0:
        raise DatasetLoadError("the training subset is empty")
    train_f, val_f = _as_float(train_x, scale), _as_float(val_x, scale)
    if val_f.shape[1:] != train_f.shape[1:] and len(val_f):
        raise DatasetLoadError(f"validation images {val_f.shape[1:]} differ from training images {train_f.shape[1:]}")
    train_f, val_f, mean, std = _standardize(train_f, val_f, standardize)
    result = datasets.DatasetDict(
        {"train": _image_dataset(train_f, train_y), "validation": _image_dataset(val_f, np.asarray(val_y))}
    )
    if not return_info:
        return result
    info = {
        "mean": mean.tolist(),
        "std": std.tolist(),
        "num_labels": int(max(train_y.max(), np.max(val_y, initial=0))) + 1,
        "image_shape": list(train_f.shape[1:]),
    }
    return result, info


# ----------------------------------------------------------------------------------------------- text


def _text_dataset(source: Any, text_column: str, label_column: str, limit: int | None) -> datasets.Dataset:
    where = str(source) if isinstance(source, Path) else "the dataset"
    if isinstance(source, Path):
        if source.suffix in (".tsv", ".txt"):
            source = read_tsv(source, text_column, label_column)
        else:
            source = read_table(source)
    ds: datasets.Dataset = source
    cols = ds.column_names
    text_col = next((c for c in (text_column, "sentence", "text") if c in cols), None)
    label_col = next((c for c in (label_column, "label", "labels") if c in cols), None)
    missing = missing_columns_message(cols, text_col, label_col, text_column, label_column)
    if missing:
        raise DatasetLoadError(f"{where}: {missing}")
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    ds = ds.select_columns([text_col, label_col])
    if text_col != "sentence":
        ds = ds.rename_column(text_col, "sentence")
    if label_col != "label":
        ds = ds.rename_column(label_col, "label")
    return ds


def load_text_classification(
    name_or_path: str | None,
    *,
    train_file: str | Path | None = None,
    validation_file: str | Path | None = None,
    num_train: int | None = None,
    num_validation: int | None = None,
    text_column: str = "sentence",
    label_column: str = "label",
    split: str = "train",
) -> datasets.DatasetDict:
    """Load a text classification data set (SST-2 by default) with columns ``sentence`` and ``label``.

    Sources: a Hub name (``"sst2"``/``"stanfordnlp/sst2"``, ``"glue"``/``"glue/sst2"``), a TSV (read with quote
    handling off, as GLUE's files need), a CSV/JSON/parquet file, a ``save_to_disk`` folder, or a folder with
    ``train.tsv`` and ``dev.tsv``.

    Args:
        name_or_path: Hub name, file or folder; may be ``None`` when ``train_file`` is given.
        train_file: local training file (overrides ``name_or_path``).
        validation_file: local validation file.
        num_train: keep the FIRST ``num_train`` training examples.
        num_validation: keep the first ``num_validation`` validation examples.
        text_column: name of the text column in the source.
        label_column: name of the label column in the source.
        split: training split of a Hub data set or a saved ``DatasetDict``.

    Returns:
        ``DatasetDict`` with ``train`` and ``validation`` (empty when the source has none).

    Raises:
        DatasetLoadError: unreadable source, missing file, or Hub name unavailable (offline).
    """
    train_src, val_src = resolve_sources(name_or_path, train_file, validation_file, split, TEXT_HUB_NAMES, "text")
    train = _text_dataset(train_src, text_column, label_column, num_train)
    if val_src is None:
        val = train.select([])
    else:
        val = _text_dataset(val_src, text_column, label_column, num_validation)
        _check_validation_size(num_validation, len(val), _where(val_src))
    return datasets.DatasetDict({"train": train, "validation": val})


def build_tokenizer(
    texts: Iterable[str], *, name_or_path: str | None = None, vocab_size: int = 8000, max_length: int = 64
) -> Any:
    """A Hub tokenizer when ``name_or_path`` loads, otherwise a word-level tokenizer trained offline on ``texts``.

    The trained tokenizer lower-cases, splits on whitespace and punctuation, and has ``[PAD]`` = 0 and ``[UNK]`` = 1;
    it is a ``transformers`` fast tokenizer, so ``save_pretrained``/``AutoTokenizer.from_pretrained`` work.

    Args:
        texts: training texts (only read when a tokenizer is trained).
        name_or_path: optional Hub name or local tokenizer folder.
        vocab_size: maximum vocabulary size, special tokens included.
        max_length: ``model_max_length`` of the result.

    Returns:
        A ``PreTrainedTokenizerBase``.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if name_or_path:
        local = Path(name_or_path).expanduser().is_dir()
        online = local or ensure_hub_or_offline()  # no network: one quick check instead of ~50 s of Hub retries
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                name_or_path, model_max_length=max_length, local_files_only=not online
            )
        except Exception as err:
            why = "not in the local Hugging Face cache (offline)" if not online else " ".join(str(err).split())[:200]
            logger.warning(
                "tokenizer %r: %s; training a word-level tokenizer on the training texts instead", name_or_path, why
            )
        else:
            if tokenizer.pad_token is None:
                tokenizer.add_special_tokens({"pad_token": "[PAD]"})
            return tokenizer
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    core = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]"])
    core.train_from_iterator((str(t) for t in texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", model_max_length=max_length, padding_side="right"
    )


def tokenize_dataset(
    ds: datasets.Dataset | datasets.DatasetDict,
    tokenizer: Any,
    max_length: int = 64,
    text_column: str = "sentence",
    label_column: str = "label",
    progress: bool = True,
) -> datasets.Dataset | datasets.DatasetDict:
    """Tokenise (pad/truncate to ``max_length``) into columns ``input_ids``, ``attention_mask`` and ``labels``.

    Args:
        ds: a ``Dataset`` or ``DatasetDict`` with the text and label columns.
        tokenizer: a ``transformers`` tokenizer.
        max_length: fixed sequence length.
        text_column: text column name.
        label_column: label column name.
        progress: show the ``datasets`` progress bar ("Tokenizing").

    Returns:
        The same kind of object with exactly the three columns.
    """
    first = next(iter(ds.values())) if isinstance(ds, datasets.DatasetDict) else ds
    columns = list(first.column_names)

    def encode(batch: dict[str, list]) -> dict[str, list]:
        enc = tokenizer(
            batch[text_column],
            truncation=True,
            max_length=max_length,
            padding="max_length",
            return_token_type_ids=False,
        )
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "labels": [int(v) for v in batch[label_column]],
        }

    bars = datasets.is_progress_bar_enabled()
    if not progress:
        datasets.disable_progress_bars()
    try:
        return ds.map(encode, batched=True, remove_columns=columns, desc="Tokenizing")
    finally:
        if bars and not progress:
            datasets.enable_progress_bars()
