"""The model-side conditions of a Hessian pass: unwrapping, exact evaluation, no side effects, a state fingerprint.

A pass is computed

* on the bare module (DDP / DataParallel / ``torch.compile`` wrappers stripped, sharded setups refused);
* in full precision: autocast is disabled around the pass **and** the autocast wrapper that accelerate installs on
  ``model.forward`` for ``fp16`` / ``bf16`` training (which an outer ``autocast(enabled=False)`` cannot undo, since
  it re-enters autocast inside) is bypassed for the pass; frozen bf16 / fp16 weights (a LoRA base) are upcast for
  the pass only (:func:`full_precision_weights`);
* with the differentiable math attention kernel (fused SDPA kernels lack double backward);
* in eval mode by default (``eval_mode=False`` keeps the modules' own modes);
* without changing the model: in train-mode passes BatchNorm normalises with each Hessian batch's own statistics and
  does not update ``running_mean`` / ``running_var`` / ``num_batches_tracked``; any other buffer a forward changes
  is restored afterwards. Module modes are restored too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from itertools import chain
from typing import Any

import torch
from torch import nn

__all__ = [
    "batch_tensors",
    "check_not_sharded",
    "exact_mode",
    "full_precision_weights",
    "is_fsdp2",
    "state_fingerprint",
    "unwrap_model",
]


def is_fsdp2(model: nn.Module) -> bool:
    """Whether ``model`` (or a submodule) is sharded by FSDP2 (``torch.distributed.fsdp.fully_shard``)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch builds without distributed
        return False
    return any(isinstance(m, FSDPModule) for m in model.modules())


def check_not_sharded(model: nn.Module) -> None:
    """Refuse parameter-sharding setups whose local parameters are not the full model, except FSDP2 (whose
    Hessian-vector products :class:`~hf_subspace.hessian.HessianOperator` takes by finite differences)."""
    names = {type(m).__name__ for m in (model, getattr(model, "module", model))}
    if any("FullyShardedDataParallel" in n for n in names) or hasattr(model, "_fsdp_wrapped_module"):
        raise NotImplementedError(
            "HessianOperator does not support FSDP: each rank holds only a shard of the parameters. "
            "Use DDP (accelerate launch --multi_gpu / torchrun) for subspace training."
        )
    if "DeepSpeedEngine" in names:
        raise NotImplementedError(
            "HessianOperator does not support DeepSpeed engines (ZeRO shards parameters and gradients). "
            "Use DDP (accelerate launch --multi_gpu / torchrun) for subspace training."
        )
    dtensor: type | None
    try:
        from torch.distributed.tensor import DTensor as dtensor
    except ImportError:  # pragma: no cover - torch builds without distributed
        dtensor = None
    fsdp2 = is_fsdp2(model)
    for name, p in model.named_parameters():
        if hasattr(p, "ds_id") or hasattr(p, "ds_numel"):
            raise NotImplementedError(
                f"Parameter {name!r} is a DeepSpeed ZeRO partitioned parameter; HessianOperator needs whole "
                "parameters on every rank. Use DDP instead."
            )
        if dtensor is not None and isinstance(p, dtensor) and not fsdp2:
            raise NotImplementedError(
                f"Parameter {name!r} is a sharded DTensor (FSDP2 / tensor parallel); HessianOperator needs whole "
                "parameters on every rank. Use DDP instead."
            )


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP / DataParallel / ``torch.compile`` wrappers; refuse sharded-parameter wrappers."""
    check_not_sharded(model)
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


@contextlib.contextmanager
def _full_precision_forward(model: nn.Module) -> Iterator[None]:
    """Bypass accelerate's mixed-precision wrapper of ``model.forward`` for the duration of the block.

    ``Accelerator.prepare_model`` (used by the Trainer with ``fp16``/``bf16``) keeps the original as
    ``model._original_forward`` and sets an instance attribute ``forward`` that runs it under autocast.
    """
    wrapped = model.__dict__.get("forward")
    original = model.__dict__.get("_original_forward")
    if wrapped is None or original is None or original is wrapped:
        yield
        return
    model.forward = original
    try:
        yield
    finally:
        model.forward = wrapped


@contextlib.contextmanager
def _no_buffer_side_effects(model: nn.Module) -> Iterator[None]:
    """Train-mode BatchNorm with batch statistics and no running-statistics update; other changed buffers restored."""
    toggled = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]
    buffers = [b for b in model.buffers() if isinstance(b, torch.Tensor)]
    snapshot = [(b, b._version, b.detach().clone()) for b in buffers]
    for m in toggled:
        m.track_running_stats = False  # F.batch_norm then gets no running tensors: batch statistics, nothing updated
    try:
        yield
    finally:
        for m in toggled:
            m.track_running_stats = True
        with torch.no_grad():
            for b, version, saved in snapshot:
                if b._version != version:
                    b.copy_(saved)


@contextlib.contextmanager
def full_precision_weights(model: nn.Module, dtype: torch.dtype) -> Iterator[None]:
    """bf16 / fp16 parameters and buffers held in ``dtype`` for the block; the original tensors are put back after.

    A frozen low-precision base under full-precision trainable parameters (peft LoRA adapters on a bf16 model) would
    otherwise run every product through bf16 matmuls. The upcast copies exist only during the block (no resident
    full-precision copy of the base); the originals are restored as they were (same storage, no rounding).
    """
    saved = []
    with torch.no_grad():
        for t in chain(model.parameters(), model.buffers()):
            if t.dtype in (torch.bfloat16, torch.float16) and dtype not in (torch.bfloat16, torch.float16):
                saved.append((t, t.data))
                t.data = t.data.to(dtype)
    try:
        yield
    finally:
        for t, data in saved:
            t.data = data


@contextlib.contextmanager
def exact_mode(model: nn.Module, eval_mode: bool, device: torch.device) -> Iterator[None]:
    """Conditions of one Hessian pass (see the module docstring); everything is restored on exit."""
    modes = [(m, m.training) for m in model.modules()]
    if eval_mode:
        model.eval()
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.enable_grad())
            # Curvature in bf16/fp16 is noise: no autocast, neither an outer one nor accelerate's forward wrapper.
            for device_type in {device.type, "cpu"}:
                stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
            stack.enter_context(_full_precision_forward(model))
            # Fused SDPA kernels lack double backward: force the differentiable math path.
            from torch.nn.attention import SDPBackend, sdpa_kernel

            stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
            if not eval_mode:
                stack.enter_context(_no_buffer_side_effects(model))
            yield
    finally:
        for m, mode in modes:
            m.training = mode


def batch_tensors(obj: Any) -> Iterable[torch.Tensor]:
    """Every tensor of a batch (a tensor, or mappings and sequences of them)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from batch_tensors(v)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            yield from batch_tensors(v)


def state_fingerprint(model: nn.Module, batches: Iterable[Any], eval_mode: bool) -> tuple[Any, ...]:
    """A key that changes whenever the loss over ``batches`` can have changed.

    Covers every parameter and buffer of the model (not only the covered parameters) and every tensor of the
    batches: identity, storage and in-place version (optimizer steps, ``load_state_dict``, SAM perturbations,
    BatchNorm statistics, ``p.data = ...`` replacements), plus the module modes when passes keep them.
    """
    key: list[Any] = [
        (id(t), t.data_ptr(), t._version)
        for t in chain(model.parameters(), model.buffers(), batch_tensors(list(batches)))
    ]
    if not eval_mode:
        key.append(tuple(m.training for m in model.modules()))
    return tuple(key)
