"""Functional helpers for multi-process runs.

Every helper is a no-op (or returns the single-process answer) when ``torch.distributed`` is not initialised or the
world has one process, so library code can call them unconditionally. Processes are started by ``torchrun`` or
``accelerate launch``; this module never initialises a process group itself.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "all_gather_into",
    "all_reduce_sum",
    "barrier",
    "broadcast",
    "broadcast_flag",
    "is_distributed",
    "is_main_process",
    "rank",
    "reduce_scatter_sum",
    "world_size",
]


def is_distributed() -> bool:
    """True when a process group is initialised and holds more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """Global rank of this process (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """True on global rank 0 (and always in a single process)."""
    return rank() == 0


def _comm_device(tensor: torch.Tensor) -> torch.device:
    # gloo reduces CPU tensors, nccl needs CUDA ones: move to what the backend takes, and back afterwards.
    backend = dist.get_backend()
    if backend == "nccl" and tensor.device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    if backend == "gloo" and tensor.device.type not in ("cpu",):
        return torch.device("cpu")
    return tensor.device


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes, in place where possible, and return the result.

    Args:
        tensor: the local contribution; every rank must pass the same shape and dtype.

    Returns:
        The global sum (the input itself when not distributed).
    """
    if not is_distributed():
        return tensor
    device = _comm_device(tensor)
    buf = tensor if device == tensor.device else tensor.to(device)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    if buf is not tensor:
        tensor.copy_(buf)
    return tensor


def all_gather_into(out: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``local`` (equal sizes, rank order) into the contiguous ``out``; returns ``out``."""
    return _into(out, local, dist.all_gather_into_tensor)


def reduce_scatter_sum(out: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """Sum ``full`` (contiguous, ``world_size`` equal parts) over the ranks; rank r gets part r in ``out``."""
    return _into(out, full, lambda buf, src: dist.reduce_scatter_tensor(buf, src, op=dist.ReduceOp.SUM))


def _into(out: torch.Tensor, source: torch.Tensor, collective: Any) -> torch.Tensor:
    """Run ``collective(out_buffer, source)`` on the backend's device, writing the result into ``out``."""
    if not is_distributed():
        return out.copy_(source.reshape(out.shape))
    device = _comm_device(source)
    buf = (
        out if device == out.device and out.is_contiguous() else torch.empty(out.shape, dtype=out.dtype, device=device)
    )
    collective(buf, source.to(device).contiguous())
    if buf is not out:
        out.copy_(buf)
    return out


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``tensor`` on every rank with rank ``src``'s value (no-op in one process)."""
    if not is_distributed():
        return tensor
    device = _comm_device(tensor)
    buf = tensor if device == tensor.device else tensor.to(device)
    dist.broadcast(buf, src=src)
    if buf is not tensor:
        tensor.copy_(buf)
    return tensor


def broadcast_flag(flag: bool, src: int = 0) -> bool:
    """Make a control-flow decision identical on all ranks by taking rank ``src``'s value.

    Iterative solvers stop on a test of floating-point numbers; should two ranks ever disagree in the last bit,
    one of them would enter a collective the other skips and both would hang. Taking one rank's decision avoids it.
    """
    if not is_distributed():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    broadcast(t, src=src)
    return bool(t.item())


def barrier() -> None:
    """Wait until every process reaches this point (no-op in one process)."""
    if is_distributed():
        dist.barrier()
