"""Loss conventions of the Hessian passes: which loss a batch gives, and how many loss items it averages over.

The Hessian is of the mean over all *loss items* of the Hessian dataset, the quantity a ``transformers.Trainer``
optimises: for token-level losses (causal LM, token classification, seq2seq) an item is a label ``!= -100`` (for
causal LMs counted after the one-position shift, as the model's loss counts it); for sequence-level losses it is a
sample. A batch ``b`` with ``n_b`` items and loss ``L_b`` (its mean over those items) contributes ``n_b L_b``, and the
sum over batches (and ranks) is divided by ``N = Σ n_b``, so the Hessian does not depend on how the dataset is cut
into batches or shards, unless the loss has a term computed per batch rather than per item (a Mixture-of-Experts
router's load-balancing loss: then it depends on the batch size).

A loss function may take ``num_items_in_batch`` (like the Trainer's ``compute_loss_func`` and transformers models whose
``forward`` takes ``**kwargs``): it then gets the batch's own item count and returns ``sum / num_items_in_batch``,
which is again the batch's mean. A loss function may also return ``(loss, num_items)`` to say itself how many items
its mean is over.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "IGNORE_INDEX",
    "LABEL_KEYS",
    "LossFn",
    "NumItemsFn",
    "accepts_num_items",
    "batch_num_samples",
    "count_loss_items",
    "default_loss_fn",
    "describe_outputs",
    "evaluate_loss",
    "loss_from_outputs",
    "model_shifts_labels",
]

IGNORE_INDEX = -100
"""Label value that the transformers losses (and ``nn.CrossEntropyLoss``) ignore."""

LABEL_KEYS = ("labels", "start_positions", "end_positions")
"""Batch keys a transformers model computes its loss from: ``labels``, or the answer span of extractive QA (one loss
item per sample)."""

LossFn = Callable[..., "torch.Tensor | tuple[torch.Tensor, int | torch.Tensor]"]
"""``loss_fn(model, batch[, num_items_in_batch=n])`` → scalar mean loss, or ``(mean loss, number of items)``."""

NumItemsFn = Callable[[Any], int]
"""``num_items_fn(batch)`` → number of loss items the batch's mean loss averages over."""


def batch_num_samples(batch: Any) -> int:
    """Sample count of a batch: length of its labels (mapping: ``labels``, or extractive QA's ``start_positions``)
    or of the first element (tuple/list/tensor)."""
    if isinstance(batch, Mapping):
        key = next((k for k in LABEL_KEYS if k in batch), None)
        if key is None:
            raise ValueError(
                f"A Hessian-dataset batch has no 'labels' (keys: {sorted(batch)}); the Hessian is of the training "
                "loss, which needs labels. Add them to the Hessian dataset (or make them in the data collator)."
            )
        return len(batch[key])
    if isinstance(batch, (tuple, list)):
        return len(batch[0])
    if isinstance(batch, torch.Tensor):
        return len(batch)
    raise TypeError(f"Cannot count the samples of a batch of type {type(batch).__name__}")


def _base_model(model: nn.Module) -> nn.Module:
    get_base = getattr(model, "get_base_model", None)  # peft
    return get_base() if callable(get_base) else model


def model_shifts_labels(model: nn.Module) -> bool:
    """True for a decoder-only causal LM, whose loss predicts ``labels[..., 1:]`` (position 0 is never a target).

    Recognised as transformers does (the model's ``loss_type`` maps to ``ForCausalLMLoss``) or, since e.g. GPT-2 has
    ``loss_type=None`` in transformers 5, by the class being registered as a causal LM. Encoder-decoder models are
    not shifted (their decoder inputs are).
    """
    base = _base_model(model)
    if getattr(getattr(base, "config", None), "is_encoder_decoder", False):
        return False
    try:
        from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    loss_type = getattr(base, "loss_type", None)
    if isinstance(loss_type, str) and LOSS_MAPPING.get(loss_type) is ForCausalLMLoss:
        return True
    return type(base).__name__ in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def count_loss_items(batch: Any, shift_labels: bool = False) -> int:
    """Number of loss items of a batch.

    Mapping batches: the entries of ``shift_labels`` (if the collator provides it) or of ``labels`` (without the
    first position when ``shift_labels``) that are not ``-100``, or the number of samples without either; this is the Trainer's count for ``num_items_in_batch``
    and the denominator of the transformers losses. Other batches: the number of samples (first dimension).

    Raises:
        ValueError: labels that are not a tensor / array.
    """
    if not isinstance(batch, Mapping):
        return batch_num_samples(batch)
    if "shift_labels" in batch:
        labels = batch["shift_labels"]
    elif "labels" not in batch:  # a loss without a labels tensor (e.g. extractive QA's positions): one per sample
        return batch_num_samples(batch)
    else:
        labels = batch["labels"]
        if shift_labels:
            labels = torch.as_tensor(labels)[..., 1:]
    try:
        return int(torch.as_tensor(labels).ne(IGNORE_INDEX).sum())
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(
            f"Cannot count the loss items of labels of type {type(labels).__name__}; pass num_items_fn= (batch → "
            "number of items its loss averages over) or a loss_fn returning (loss, num_items)."
        ) from err


@functools.lru_cache(maxsize=256)
def _takes_num_items(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "num_items_in_batch" or p.kind == inspect.Parameter.VAR_KEYWORD for p in params)


def accepts_num_items(fn: Callable[..., Any]) -> bool:
    """True when ``fn`` takes a ``num_items_in_batch`` keyword (by name or through ``**kwargs``)."""
    target = getattr(fn, "__func__", fn)  # bound methods: cache on the function
    try:
        return _takes_num_items(target)
    except TypeError:  # unhashable callable
        return _takes_num_items.__wrapped__(target)


def _model_accepts_loss_kwargs(model: nn.Module) -> bool:
    # The Trainer's rule: the model's `accepts_loss_kwargs` attribute, else a `**kwargs` in forward.
    flag = getattr(_base_model(model), "accepts_loss_kwargs", None)
    if flag is not None:
        return bool(flag)
    forward = type(_base_model(model)).forward
    try:
        params = inspect.signature(forward).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params)


def describe_outputs(outputs: Any) -> str:
    """A short description of what a model returned (type, keys, shapes) for error messages."""
    if isinstance(outputs, Mapping):
        return f"a {type(outputs).__name__} with keys {list(outputs.keys())}"
    if isinstance(outputs, (tuple, list)):
        parts = [f"Tensor{tuple(o.shape)}" if isinstance(o, torch.Tensor) else type(o).__name__ for o in outputs[:4]]
        return f"a {type(outputs).__name__} of {len(outputs)} element(s) ({', '.join(parts)})"
    if isinstance(outputs, torch.Tensor):
        return f"a Tensor of shape {tuple(outputs.shape)}"
    return f"a {type(outputs).__name__}"


def loss_from_outputs(outputs: Any, batch: Any = None) -> torch.Tensor:
    """The loss in a model's outputs, by the Trainer's convention: ``outputs["loss"]`` of a mapping (``ModelOutput``
    included), ``outputs[0]`` of a tuple/list, ``outputs.loss`` otherwise.

    Raises:
        ValueError: when there is no scalar loss there, saying what the model returned.
    """
    if isinstance(outputs, Mapping):
        loss = outputs.get("loss")
    elif isinstance(outputs, (tuple, list)):
        loss = outputs[0] if len(outputs) else None
    else:
        loss = getattr(outputs, "loss", None)
    if isinstance(loss, torch.Tensor) and loss.dim() == 0:
        return loss
    keys = f" (batch keys: {sorted(batch)})" if isinstance(batch, Mapping) else ""
    raise ValueError(
        f"model(**batch) returned {describe_outputs(outputs)}{keys}, with no scalar loss where the Trainer looks for "
        "it (outputs['loss'], or outputs[0] of a tuple). Give the batches the 'labels' the model computes its loss "
        "from, or pass loss_fn=lambda model, batch: <scalar mean loss>."
    )


def default_loss_fn(model: nn.Module, batch: Any, num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
    """The Hugging Face convention: the loss in ``model(**batch)`` (see :func:`loss_from_outputs`).

    When the model's ``forward`` takes ``**kwargs`` (transformers models do), ``num_items_in_batch`` is passed on, so
    the model divides its summed loss by the operator's item count, exactly as under the Trainer.
    """
    if not isinstance(batch, Mapping):
        raise TypeError(
            f"The default loss_fn needs mapping batches (dicts with 'labels'), got {type(batch).__name__}; "
            "pass loss_fn=lambda model, batch: ... returning the batch's mean loss."
        )
    kwargs = dict(batch)
    if num_items_in_batch is not None and _model_accepts_loss_kwargs(model):
        kwargs["num_items_in_batch"] = num_items_in_batch
    return loss_from_outputs(model(**kwargs), batch)


def evaluate_loss(
    loss_fn: LossFn, model: nn.Module, batch: Any, num_items: int, device: torch.device
) -> tuple[torch.Tensor, int]:
    """One batch's mean loss and the number of items it averages over.

    ``loss_fn`` gets ``num_items_in_batch`` (a 0-d int64 tensor on ``device``, as the Trainer passes it) when it takes
    that keyword; a ``(loss, num_items)`` return overrides ``num_items``.

    Raises:
        ValueError: a non-scalar loss or a negative item count.
    """
    if accepts_num_items(loss_fn):
        out = loss_fn(model, batch, num_items_in_batch=torch.tensor(num_items, dtype=torch.int64, device=device))
    else:
        out = loss_fn(model, batch)
    if isinstance(out, tuple):
        out, num_items = out[0], int(out[1])
        if num_items < 0:
            raise ValueError(f"loss_fn returned a negative item count {num_items}")
    if not isinstance(out, torch.Tensor) or out.dim() != 0:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"loss_fn must return a scalar mean loss (or (loss, num_items)), got {shape}")
    return out, num_items
