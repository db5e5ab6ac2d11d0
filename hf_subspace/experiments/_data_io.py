"""Locating and reading data sources for :mod:`hf_subspace.experiments.data`: Hub names, local files and folders."""

from __future__ import annotations

import csv
import gzip
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import datasets
import numpy as np

__all__ = [
    "IMAGE_HUB_NAMES",
    "TEXT_HUB_NAMES",
    "DatasetLoadError",
    "check_file",
    "load_hub",
    "missing_columns_message",
    "read_idx",
    "read_table",
    "read_tsv",
    "resolve_sources",
]

IMAGE_HUB_NAMES: dict[str, tuple[str, str | None]] = {
    "mnist": ("ylecun/mnist", None),
    "cifar10": ("uoft-cs/cifar10", None),
    "cifar-10": ("uoft-cs/cifar10", None),
    "fashion_mnist": ("zalando-datasets/fashion_mnist", None),
}
TEXT_HUB_NAMES: dict[str, tuple[str, str | None]] = {
    "sst2": ("stanfordnlp/sst2", None),
    "sst-2": ("stanfordnlp/sst2", None),
    "glue": ("nyu-mll/glue", "sst2"),
    "glue/sst2": ("nyu-mll/glue", "sst2"),
    "glue:sst2": ("nyu-mll/glue", "sst2"),
}
_TABLE_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_KNOWN_SUFFIXES = {".npz", ".gz", ".tsv", ".txt", *_TABLE_BUILDERS}
_VALIDATION_STEMS = ("validation", "valid", "val", "dev", "test", "t10k-images-idx3-ubyte")


class DatasetLoadError(ValueError):
    """A dataset could not be loaded (offline Hub name, missing or unreadable file)."""


def _hint(kind: str) -> str:
    if kind == "image":
        example = "--train_file path/to/train.npz (arrays x, y)"
    else:
        example = "--train_file path/to/train.tsv (columns sentence, label; no quote handling)"
    return f"Pass a local copy with {example} or a CSV/JSON/parquet file or a datasets folder."


def check_file(path: str | Path, what: str) -> Path:
    """Return ``path`` as a ``Path``; raise :class:`DatasetLoadError` naming it (and ``what`` it is) if missing."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetLoadError(f"{what} not found: {p}")
    return p


def load_hub(name: str, config: str | None, kind: str, *, alias: str | None = None) -> datasets.DatasetDict:
    """Load a Hub data set; any failure becomes a :class:`DatasetLoadError` that says how to pass a local copy.

    Args:
        name: Hub repository id.
        config: optional configuration name.
        kind: ``"image"`` or ``"text"`` (selects the example in the message).
        alias: the name the user gave, when it was mapped to ``name``.
    """
    from ._hub import ensure_hub_or_offline

    ensure_hub_or_offline()  # no network: offline mode (the local cache only) instead of minutes of retries
    try:
        loaded = datasets.load_dataset(name, config)
    except Exception as err:
        label = repr(alias or name) + (f" ({name}{'/' + config if config else ''})" if alias and alias != name else "")
        raise DatasetLoadError(
            f"Could not load {label} from the Hugging Face Hub (offline?). {_hint(kind)} [{type(err).__name__}: {err}]"
        ) from err
    return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})


def _pick_splits(dd: datasets.DatasetDict, split: str) -> tuple[Any, Any]:
    if split not in dd:
        raise DatasetLoadError(f"split {split!r} not found; available splits: {list(dd)}")
    val = next((dd[s] for s in ("validation", "valid", "dev", "test") if s in dd and s != split), None)
    return dd[split], val


def _find_in_dir(folder: Path) -> tuple[Path | None, Path | None]:
    def first(stems: Iterable[str]) -> Path | None:
        for stem in stems:
            for candidate in sorted(folder.glob(f"{stem}*")):
                if candidate.is_file() and candidate.suffix in _KNOWN_SUFFIXES and "labels-idx" not in candidate.name:
                    return candidate
        return None

    return first(("train",)), first(_VALIDATION_STEMS)


def _is_saved_dataset(folder: Path) -> bool:
    return folder.is_dir() and any((folder / f).exists() for f in ("dataset_dict.json", "state.json"))


def resolve_sources(
    name_or_path: str | None,
    train_file: str | Path | None,
    validation_file: str | Path | None,
    split: str,
    hub_names: dict[str, tuple[str, str | None]],
    kind: str,
) -> tuple[Any, Any]:
    """Return ``(train, validation)`` sources: each a ``Path``, a ``datasets.Dataset`` or ``None``."""
    val: Any = check_file(validation_file, "validation file") if validation_file else None
    if train_file:
        return check_file(train_file, "training file"), val
    if not name_or_path:
        raise DatasetLoadError(f"Give a dataset name or a training file. {_hint(kind)}")
    path = Path(name_or_path).expanduser()
    if path.exists():
        if path.is_file():
            return path, val
        if _is_saved_dataset(path):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.Dataset):
                return loaded, val
            train_ds, val_ds = _pick_splits(loaded, split)
            return train_ds, val if val is not None else val_ds
        train, found_val = _find_in_dir(path)
        if train is None:
            raise DatasetLoadError(f"no train.* file (npz/csv/tsv/json/parquet) or saved dataset found in {path}")
        return train, val if val is not None else found_val
    if path.suffix in _KNOWN_SUFFIXES or ("/" in name_or_path and path.parent.exists()):
        raise DatasetLoadError(f"dataset file not found: {path}")
    hub_name, config = hub_names.get(name_or_path.lower(), (name_or_path, None))
    train_ds, val_ds = _pick_splits(load_hub(hub_name, config, kind, alias=name_or_path), split)
    return train_ds, val if val is not None else val_ds


def missing_columns_message(
    columns: Iterable[str], text_found: str | None, label_found: str | None, text_column: str, label_column: str
) -> str:
    """What a text dataset lacks, naming only the missing column(s) and the option that picks another column
    (``""`` when nothing is missing)."""
    parts = []
    if text_found is None:
        parts.append(f"no text column: neither {text_column!r} nor 'sentence'/'text' (pass --text_column NAME)")
    if label_found is None:
        parts.append(f"no label column: neither {label_column!r} nor 'label'/'labels' (pass --label_column NAME)")
    if not parts:
        return ""
    return f"{'; '.join(parts)}; its columns are {list(columns)}"


def read_table(path: Path) -> datasets.Dataset:
    """Read a CSV/JSON(L)/parquet file (or a saved data set folder) into one ``Dataset``."""
    builder = _TABLE_BUILDERS.get(path.suffix)
    if path.is_dir():
        loaded = datasets.load_from_disk(str(path))
        return loaded if isinstance(loaded, datasets.Dataset) else loaded["train"]
    if builder is None:
        raise DatasetLoadError(f"unsupported file type {path.suffix!r}: {path}")
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as err:
        raise DatasetLoadError(f"could not read {path}: {type(err).__name__}: {err}") from err


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the original MNIST format), gzipped or not.

    Args:
        path: e.g. ``t10k-images-idx3-ubyte.gz``.

    Returns:
        The array, e.g. uint8 ``[N, 28, 28]`` for images or ``[N]`` for labels.
    """
    p = check_file(path, "IDX file")
    with (gzip.open if p.suffix == ".gz" else open)(p, "rb") as handle:
        raw = handle.read()
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in dtypes:
        raise DatasetLoadError(f"not an IDX file: {p}")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=dtypes[raw[2]], offset=4 + 4 * ndim).reshape(shape)


def read_tsv(path: Path, text_column: str, label_column: str) -> datasets.Dataset:
    """Read a GLUE-style TSV with quote handling off (a header naming the columns, or two headerless columns)."""
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows:
        raise DatasetLoadError(f"empty file: {path}")
    header = rows[0]
    text_name = next((c for c in (text_column, "sentence", "text") if c in header), None)
    label_name = next((c for c in (label_column, "label", "labels") if c in header), None)
    if text_name is not None and label_name is not None:
        ti, li, body = header.index(text_name), header.index(label_name), rows[1:]
    elif len(header) == 2 and header[1].strip().lstrip("-").isdigit():
        ti, li, body = 0, 1, rows
    else:
        missing = missing_columns_message(header, text_name, label_name, text_column, label_column)
        raise DatasetLoadError(f"{path}: {missing}")
    try:
        data = {text_column: [r[ti].strip() for r in body if r], label_column: [int(r[li]) for r in body if r]}
    except (IndexError, ValueError) as err:
        raise DatasetLoadError(f"{path}: malformed row ({err})") from err
    return datasets.Dataset.from_dict(data)
