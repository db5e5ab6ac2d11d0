"""The fixed Hessian batches of a trainer, built from whatever form of data a `transformers.Trainer` user holds.

:func:`build_hessian_batches` turns the Hessian dataset into this rank's list of collated batches, once:

* a map-style dataset (``datasets.Dataset``, a torch ``Dataset``, a list of examples): the examples at the given
  indices, collated by the trainer's ``data_collator`` in chunks of ``hessian_batch_size``;
* an iterable dataset (a streaming ``datasets.IterableDataset``, a torch ``IterableDataset``): its first
  ``hessian_num_samples`` examples, collated the same way;
* a ``torch.utils.data.DataLoader``: its batches as they come (its own collator and batch size);
* a list of collated batches (mappings whose tensors share a leading batch dimension and include a matrix):
  taken as they are.

Columns the model's ``forward`` does not take are removed the way the Trainer removes them (``remove_unused_columns``:
``datasets.Dataset`` columns are dropped, other examples go through the Trainer's column-removing collator, and
pre-collated batches lose those keys). Labels may come from the collator (``DataCollatorForLanguageModeling``): no
column is required, the trainer checks that the collated batches give the model a loss.

The build never touches the global random state: a random collator (MLM masking) or a shuffling ``DataLoader`` draws
from generators seeded with ``hessian_seed`` (default: the training seed) inside a forked RNG, so the Hessian set is
reproducible and a run trains exactly as the plain ``Trainer`` would from step 0.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from . import distributed
from ._loss_items import LossFn, default_loss_fn
from .hessian import HessianOperator

__all__ = [
    "build_hessian_batches",
    "choose_hessian_loss",
    "hessian_subset_indices",
    "is_collated_batch",
    "isolated_rng",
]

logger = logging.getLogger(__name__)


def hessian_subset_indices(num_examples: int, args: Any) -> np.ndarray:
    """Indices of the default Hessian dataset among ``num_examples`` training examples (sorted).

    All of them when ``args.hessian_num_samples >= num_examples``; otherwise a choice without replacement of
    ``hessian_num_samples`` drawn with seed ``args.hessian_seed`` (default ``args.seed``), so every run, resume and
    process of an experiment computes the Hessian on the same examples.
    """
    if args.hessian_num_samples >= num_examples:
        return np.arange(num_examples)
    rng = np.random.default_rng(hessian_seed(args))
    return np.sort(rng.choice(num_examples, size=args.hessian_num_samples, replace=False))


def hessian_seed(args: Any) -> int:
    return int(args.seed if args.hessian_seed is None else args.hessian_seed)


@contextlib.contextmanager
def isolated_rng(seed: int) -> Iterator[None]:
    """Run the block with Python's, NumPy's and torch's CPU generators seeded with ``seed``, all restored on exit.

    Only the CPU torch generator is forked and seeded (``torch.manual_seed`` would also queue a seed for CUDA
    generators that are not initialised yet, changing the training run's GPU randomness).
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.default_generator.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def is_collated_batch(item: Any) -> bool:
    """True for a mapping of tensors sharing a leading batch dimension, one of them at least a matrix.

    An example has scalar labels or 1-d token rows (``input_ids [L]``); a collated batch has ``[B]`` labels and
    ``[B, ...]`` inputs. A batch of only 1-d tensors (scalar features) cannot be told from a token example; pass such
    data as a ``DataLoader``.
    """
    if not isinstance(item, Mapping) or not item:
        return False
    values = list(item.values())
    if not all(isinstance(v, torch.Tensor) and v.dim() >= 1 for v in values):
        return False
    return len({v.shape[0] for v in values}) == 1 and any(v.dim() >= 2 for v in values)


def _is_batch_list(dataset: Any) -> bool:
    return isinstance(dataset, (list, tuple)) and bool(dataset) and all(is_collated_batch(b) for b in dataset)


def _signature_filter(trainer: Any, batch: Any) -> Any:
    if not trainer.args.remove_unused_columns or not isinstance(batch, Mapping):
        return batch
    trainer._set_signature_columns_if_needed()
    keep = set(trainer._signature_columns)
    return {k: v for k, v in batch.items() if k in keep}


def _shard(items: list[Any]) -> list[Any]:
    # Each rank takes a contiguous shard; products are summed across ranks weighted by loss-item counts.
    index = np.array_split(np.arange(len(items)), distributed.world_size())[distributed.rank()]
    return [items[int(i)] for i in index]


def _collate(trainer: Any, examples: list[Any]) -> list[Any]:
    size = trainer.args.hessian_batch_size
    collator = trainer._get_collator_with_removed_columns(trainer.data_collator, description="hessian")
    return [collator(examples[s : s + size]) for s in range(0, len(examples), size)]


def _unsupported(dataset: Any) -> ValueError:
    return ValueError(
        f"hessian_dataset of type {type(dataset).__name__} is not supported: pass a map-style dataset "
        "(datasets.Dataset, a torch Dataset, a list of examples), an iterable dataset (its first hessian_num_samples "
        "examples are used), a torch DataLoader, or a list of collated batches (dicts of [batch, ...] tensors)."
    )


def build_hessian_batches(trainer: Any, dataset: Any, *, subset: bool) -> list[Any]:
    """This rank's collated Hessian batches (see the module docstring).

    Args:
        trainer: the `transformers.Trainer` (its ``args``, ``data_collator`` and column removal are used).
        dataset: the Hessian dataset in one of the accepted forms.
        subset: draw the seeded subset of ``hessian_num_samples`` examples (:func:`hessian_subset_indices`) from a
            map-style dataset, as for the default Hessian set taken from the training set; otherwise use all of it.

    Raises:
        ValueError: an unsupported form.
    """
    args = trainer.args
    from torch.utils.data import DataLoader

    with isolated_rng(hessian_seed(args)):
        if isinstance(dataset, DataLoader) or _is_batch_list(dataset):
            batches = _shard([_signature_filter(trainer, b) for b in dataset])
        elif hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__") and not _is_iterable_dataset(dataset):
            indices = hessian_subset_indices(len(dataset), args) if subset else np.arange(len(dataset))
            if _is_hf_dataset(dataset):
                dataset = trainer._remove_unused_columns(dataset, description="hessian")
            batches = _collate(trainer, [dataset[int(i)] for i in _shard(list(indices))])
        elif hasattr(dataset, "__iter__") and not isinstance(dataset, (str, bytes, Mapping)):
            examples = list(itertools.islice(iter(dataset), args.hessian_num_samples))
            logger.info("Hessian set: the first %d examples of the iterable %s", len(examples), type(dataset).__name__)
            batches = _collate(trainer, _shard(examples))
        else:
            raise _unsupported(dataset)
    return batches


def _is_iterable_dataset(dataset: Any) -> bool:
    if isinstance(dataset, torch.utils.data.IterableDataset):
        return True
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        return False
    return isinstance(dataset, datasets.IterableDataset)


def _is_hf_dataset(dataset: Any) -> bool:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        return False
    return isinstance(dataset, datasets.Dataset)


_NO_LOSS_MARKERS = ("did not return a loss", "no scalar loss", "has no 'labels'")


def _probe(model: nn.Module, batch: Any, params: Sequence[torch.Tensor], loss_fn: LossFn) -> None:
    """One Hessian-vector product on one batch: the loss exists and is twice differentiable."""
    op = HessianOperator(model, [batch], loss_fn, params=list(params), distributed=False)
    with contextlib.suppress(FloatingPointError):  # non-finite data or weights: the training-time checks name the step
        op.matvec(torch.ones(op.dim, dtype=op.dtype, device=op.device))


def _loss_value(model: nn.Module, batch: Any, params: Sequence[torch.Tensor], loss_fn: LossFn) -> float:
    return HessianOperator(model, [batch], loss_fn, params=list(params), distributed=False).loss()


def _no_loss_error(batch: Any, err: Exception) -> ValueError:
    keys = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
    return ValueError(
        f"The collated Hessian batches give the model no loss (batch keys: {keys}); the Hessian is of the training "
        "loss. Give the dataset what the model computes its loss from ('labels'; 'start_positions' and "
        "'end_positions' for extractive QA), or a data_collator that makes the labels (DataCollatorForLanguageModeling "
        f"for causal and masked LMs), or pass hessian_dataset= with them. ({err})"
    )


def _not_twice_differentiable(err: RuntimeError, detail: str) -> RuntimeError:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if "ctc" in str(err).lower():
        hint = (
            "The CTC loss (torch.nn.functional.ctc_loss, e.g. Wav2Vec2ForCTC) has no second derivative in PyTorch: "
            "train this model with a plain Trainer, or pass compute_loss_func= a twice-differentiable loss."
        )
    else:
        hint = (
            "Hessian-vector products need double backward through the loss; compute it with differentiable "
            "operations (a compute_loss_func=, or the model's own loss)."
        )
    return RuntimeError(
        f"The training loss is not twice differentiable on the first Hessian batch: {text}. {hint}{detail}"
    )


def choose_hessian_loss(model: nn.Module, batch: Any, params: Sequence[torch.Tensor], trainer_loss: LossFn) -> LossFn:
    """The loss of the Hessian passes: the trainer's own, checked on the first Hessian batch before training.

    The check is one Hessian-vector product: the collated batch must give the model a loss, and the loss must be
    twice differentiable. When the trainer's loss is not (TRL's ``SFTTrainer`` computes it with a chunked log-prob
    kernel that writes into preallocated outputs), the model's own loss (``model(**batch)``) is used instead if it
    is twice differentiable and equal to the trainer's loss on that batch.

    Raises:
        ValueError: the batch gives no loss. RuntimeError: no twice-differentiable loss equal to the trainer's.
    """
    try:
        _probe(model, batch, params, trainer_loss)
        return trainer_loss
    except ValueError as err:
        if any(m in str(err) for m in _NO_LOSS_MARKERS):
            raise _no_loss_error(batch, err) from err
        raise
    except RuntimeError as err:
        first = err
    try:
        _probe(model, batch, params, default_loss_fn)
        own, theirs = (_loss_value(model, batch, params, fn) for fn in (default_loss_fn, trainer_loss))
    except (RuntimeError, ValueError):
        raise _not_twice_differentiable(first, "") from first
    if not math.isclose(own, theirs, rel_tol=1e-4, abs_tol=1e-6):
        detail = f" The model's own loss differs from the trainer's on that batch ({own:.6g} vs {theirs:.6g})."
        raise _not_twice_differentiable(first, detail) from first
    logger.warning(
        "The trainer's compute_loss is not twice differentiable (%s); the Hessian is taken of the model's own loss, "
        "equal to it on the first Hessian batch (%.6g vs %.6g).",
        str(first).splitlines()[0][:120],
        own,
        theirs,
    )
    return default_loss_fn
