"""An in-memory map-style dataset of equal-length tensors, much faster to batch than an Arrow-backed ``datasets``
table in torch format (whose per-row tensorisation dominated small-model training steps on CPU)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["TensorDataset", "to_tensor_dataset"]


class TensorDataset(torch.utils.data.Dataset):
    """Columns of tensors with a common first dimension; item ``i`` is ``{name: column[i]}``.

    It has no ``column_names``, so the Trainer passes its items through unchanged (no unused-column removal) and
    ``default_data_collator`` stacks them.

    Args:
        columns: ``{name: tensor [N, ...]}``.

    Raises:
        ValueError: for no columns or columns of different lengths.
    """

    def __init__(self, columns: Mapping[str, torch.Tensor]) -> None:
        if not columns:
            raise ValueError("TensorDataset needs at least one column")
        self.columns = {name: torch.as_tensor(col) for name, col in columns.items()}
        lengths = {name: len(col) for name, col in self.columns.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"columns differ in length: {lengths}")
        self._length = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: col[index] for name, col in self.columns.items()}

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        block = {name: col[idx] for name, col in self.columns.items()}
        return [{name: col[i] for name, col in block.items()} for i in range(len(idx))]

    def select(self, indices: Sequence[int]) -> TensorDataset:
        """A new dataset with the rows ``indices`` (in that order)."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return TensorDataset({name: col[idx] for name, col in self.columns.items()})


def to_tensor_dataset(dataset: Any, columns: Sequence[str] | None = None) -> Any:
    """Convert a ``datasets.Dataset`` whose columns are all numeric arrays to a :class:`TensorDataset`.

    Anything else (a ``TensorDataset``, a torch dataset, a dataset with string columns) is returned unchanged.

    Args:
        dataset: the dataset.
        columns: the columns to keep (default: all).
    """
    if isinstance(dataset, TensorDataset) or not hasattr(dataset, "column_names") or len(dataset) == 0:
        return dataset
    names = list(columns or dataset.column_names)
    try:
        arrays = dataset.with_format("numpy", columns=names)[:]
        out = {name: torch.from_numpy(np.ascontiguousarray(arrays[name])) for name in names}
    except (TypeError, ValueError, KeyError):
        return dataset
    return TensorDataset(out)
