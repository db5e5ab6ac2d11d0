"""Matrix-free Hessian of a model's training loss over a fixed Hessian dataset.

The operator represents

.. math::

    H = \\nabla^2_\\theta \\, \\frac{1}{N} \\sum_{b} n_b \\, L_b(\\theta), \\qquad N = \\sum_b n_b,

where :math:`L_b` is the mean loss of batch :math:`b` with :math:`n_b` samples, so batches of unequal size weigh
exactly by their sample count, and :math:`\\theta \\in \\mathbb{R}^d` are the selected trainable parameters flattened in
``model.named_parameters()`` order. Products are computed by double back-propagation (Pearlmutter's trick):
:math:`Hv = \\nabla_\\theta \\langle \\nabla_\\theta L, v \\rangle`. For a block :math:`V \\in \\mathbb{R}^{d \\times m}` each
batch's forward pass and gradient graph are built once and reused by all :math:`m` columns, so a block costs one
pass over the data. Under ``torch.distributed`` every rank holds its own shard of batches; the per-rank sums
:math:`\\sum_b n_b H_b V` and :math:`N` are added with one all-reduce, so every rank gets the global product.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed as dist
from ._params import select_parameters, split_like
from .operator import LinearOperator

__all__ = ["HessianOperator", "LossFn", "batch_num_samples", "default_loss_fn", "unwrap_model"]

LossFn = Callable[[nn.Module, Any], torch.Tensor]


def default_loss_fn(model: nn.Module, batch: Any) -> torch.Tensor:
    """The Hugging Face convention: ``model(**batch).loss`` for a mapping batch."""
    if not isinstance(batch, Mapping):
        raise TypeError(
            f"The default loss_fn needs mapping batches (dicts with 'labels'), got {type(batch).__name__}; "
            "pass loss_fn=lambda model, batch: ... returning the batch's mean loss."
        )
    outputs = model(**batch)
    loss = outputs["loss"] if isinstance(outputs, Mapping) else getattr(outputs, "loss", None)
    if loss is None:
        raise ValueError(
            "model(**batch) returned no loss: the Hessian batches need a 'labels' entry, or pass a loss_fn."
        )
    return loss


def batch_num_samples(batch: Any) -> int:
    """Sample count of a batch: length of ``labels`` (mapping) or of the first element (tuple/list/tensor)."""
    if isinstance(batch, Mapping):
        if "labels" not in batch:
            raise ValueError(
                f"A Hessian-dataset batch has no 'labels' (keys: {sorted(batch)}); the Hessian is of the training "
                "loss, which needs labels. Add them to the Hessian dataset."
            )
        return len(batch["labels"])
    if isinstance(batch, (tuple, list)):
        return len(batch[0])
    if isinstance(batch, torch.Tensor):
        return len(batch)
    raise TypeError(f"Cannot count the samples of a batch of type {type(batch).__name__}")


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _check_not_sharded(model: nn.Module) -> None:
    """Refuse parameter-sharding setups, whose local parameters are not the full model."""
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
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch builds without distributed
        DTensor = ()  # type: ignore[assignment]
    for name, p in model.named_parameters():
        if hasattr(p, "ds_id") or hasattr(p, "ds_numel"):
            raise NotImplementedError(
                f"Parameter {name!r} is a DeepSpeed ZeRO partitioned parameter; HessianOperator needs whole "
                "parameters on every rank. Use DDP instead."
            )
        if DTensor and isinstance(p, DTensor):
            raise NotImplementedError(
                f"Parameter {name!r} is a sharded DTensor (FSDP2 / tensor parallel); HessianOperator needs whole "
                "parameters on every rank. Use DDP instead."
            )


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP / DataParallel / ``torch.compile`` wrappers; refuse sharded-parameter wrappers."""
    _check_not_sharded(model)
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


@contextlib.contextmanager
def _exact_mode(model: nn.Module, eval_mode: bool, device: torch.device) -> Iterator[None]:
    """Eval mode (restored per module afterwards), full precision, math attention, gradients on."""
    modes = [(m, m.training) for m in model.modules()]
    if eval_mode:
        model.eval()
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.enable_grad())
            # Mixed-precision training runs the forward under autocast; curvature in bf16/fp16 is noise.
            stack.enter_context(torch.autocast(device_type=device.type, enabled=False))
            # Fused SDPA kernels lack double backward: force the differentiable math path.
            from torch.nn.attention import SDPBackend, sdpa_kernel

            stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
            yield
    finally:
        for m, mode in modes:
            m.training = mode


class HessianOperator(LinearOperator):
    """Hessian of the mean training loss over a fixed set of batches, as a matrix-free symmetric operator.

    Args:
        model: the model (a DDP / ``torch.compile`` wrapper is unwrapped; FSDP and DeepSpeed are refused).
        batches: the Hessian dataset: an iterable of batches (mappings with ``labels``, or tuples whose first element
            sets the sample count). It is materialised once, so a shuffling ``DataLoader`` still yields a fixed
            operator. Under ``torch.distributed`` pass this rank's shard.
        loss_fn: ``loss_fn(model, batch) -> scalar`` mean loss of a batch. Default ``model(**batch).loss``.
        params: explicit parameters spanning the space (default: the trainable parameters, filtered by
            ``parameter_filter``). Each must be a parameter of ``model``.
        parameter_filter: regular expression on parameter names selecting the parameters (ignored with ``params``).
        distributed: reduce products across processes. ``None`` detects an initialised process group; ``False``
            gives this rank's own Hessian (per-rank analysis).
        eval_mode: evaluate in eval mode (dropout off, BatchNorm statistics untouched); the model's mode is
            restored afterwards either way.
        progress: show a tqdm bar over the batches of each pass.

    Raises:
        ValueError: empty Hessian dataset, no trainable parameters, reduced-precision parameters.
        NotImplementedError: sharded-parameter setups (FSDP, DeepSpeed ZeRO, DTensor).
    """

    def __init__(
        self,
        model: nn.Module,
        batches: Iterable[Any],
        loss_fn: LossFn | None = None,
        *,
        params: Sequence[torch.Tensor] | None = None,
        parameter_filter: str | None = None,
        distributed: bool | None = None,
        eval_mode: bool = True,
        progress: bool = False,
    ) -> None:
        self.model = unwrap_model(model)
        if params is None:
            named = select_parameters(self.model, parameter_filter)
            self.param_names = [n for n, _ in named]
            self.params = [p for _, p in named]
        else:
            self.params = list(params)
            if not self.params:
                raise ValueError("params is empty: the Hessian needs at least one parameter")
            by_id = {id(p): n for n, p in self.model.named_parameters()}
            missing = [i for i, p in enumerate(self.params) if id(p) not in by_id]
            if missing:
                raise ValueError(f"params[{missing[0]}] is not a parameter of the model")
            self.param_names = [by_id[id(p)] for p in self.params]
        dtypes = {p.dtype for p in self.params}
        if len(dtypes) != 1 or not dtypes <= {torch.float32, torch.float64}:
            raise ValueError(
                f"HessianOperator computes in float32 or float64, but the parameters are {sorted(map(str, dtypes))}. "
                "Keep full-precision master weights (mixed precision via autocast, as Trainer's bf16/fp16 do)."
            )
        self.dim = sum(p.numel() for p in self.params)
        self.loss_fn: LossFn = loss_fn or default_loss_fn
        self.eval_mode = eval_mode
        self.progress = progress
        self.is_distributed = dist.is_distributed() if distributed is None else bool(distributed)
        if self.is_distributed and not dist.is_distributed():
            raise ValueError("distributed=True but no torch.distributed process group with >1 process is initialised")

        if isinstance(batches, Mapping):
            batches = [batches]
        self.batches = list(batches)
        self.batch_sizes = [batch_num_samples(b) for b in self.batches]
        local = torch.tensor([float(sum(self.batch_sizes))], dtype=torch.float64)
        if self.is_distributed:
            dist.all_reduce_sum(local)
        self.num_samples = int(local.item())
        if self.num_samples == 0:
            raise ValueError(
                "The Hessian dataset is empty (no batches, or batches with no samples); pass at least one batch."
            )
        self.num_matvecs = 0
        self.num_passes = 0

    @property
    def dtype(self) -> torch.dtype:  # type: ignore[override]
        return self.params[0].dtype

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        # Read live: a Trainer may move the model after the operator was built.
        return self.params[0].device

    # -- passes over the data ---------------------------------------------------------------------------------
    def _iter_batches(self, desc: str) -> Iterator[tuple[int, Any]]:
        items = zip(self.batch_sizes, self.batches)
        if self.progress:
            items = tqdm(items, total=len(self.batches), desc=desc, leave=False)
        for n, batch in items:
            if n > 0:
                yield n, _to_device(batch, self.device)

    def _batch_loss(self, batch: Any) -> torch.Tensor:
        loss = self.loss_fn(self.model, batch)
        if loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar mean loss, got shape {tuple(loss.shape)}")
        return loss.to(self.dtype)

    def _reduce(self, total: torch.Tensor) -> torch.Tensor:
        if self.is_distributed:
            dist.all_reduce_sum(total)
        return total.div_(self.num_samples)

    def matmat(self, block: torch.Tensor) -> torch.Tensor:
        """Hessian times a block of vectors ``[d, m]`` in one pass over the Hessian dataset.

        Returns:
            ``H @ block`` as a ``[d, m]`` tensor (identical on every rank when distributed).

        Raises:
            FloatingPointError: if a product is not finite (diverged parameters or loss).
        """
        self._check_block(block)
        m = block.shape[1]
        rows = block.detach().to(device=self.device, dtype=self.dtype).T.contiguous()  # [m, d]: row j is vector j
        v_parts = split_like(rows, self.params)
        # One buffer, one all-reduce: m products, then the gradient and the loss the same pass yields for free.
        total = torch.zeros((m + 1) * self.dim + 1, dtype=self.dtype, device=self.device)
        products = total[: m * self.dim].view(m, self.dim)
        out_parts = split_like(products, self.params)
        grad_parts = split_like(total[m * self.dim : -1], self.params)
        with _exact_mode(self.model, self.eval_mode, self.device):
            for n, batch in self._iter_batches("Hessian-vector products"):
                loss = self._batch_loss(batch)
                total[-1] += n * loss.detach()
                if not loss.requires_grad:
                    continue
                grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
                for out, g in zip(grad_parts, grads):
                    if g is not None:
                        out.add_(g.detach(), alpha=n)
                # Gradients that do not depend on the parameters (unused or linear ones) have zero curvature.
                active = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
                if not active:
                    continue
                outputs = [grads[i] for i in active]
                for j in range(m):
                    hv = torch.autograd.grad(
                        outputs,
                        self.params,
                        grad_outputs=[v_parts[i][j] for i in active],
                        retain_graph=j < m - 1,
                        allow_unused=True,
                    )
                    for out, h in zip(out_parts, hv):
                        if h is not None:
                            out[j].add_(h, alpha=n)
                del grads, outputs, loss
        self._reduce(total)
        self.num_matvecs += m
        self.num_passes += 1
        # One float64 sum instead of an elementwise isfinite: NaN/inf anywhere makes it non-finite, at 1/3 the cost.
        if not math.isfinite(float(products.sum(dtype=torch.float64))):
            raise FloatingPointError(
                "A Hessian-vector product is not finite (NaN or inf): the loss or parameters have diverged. "
                "Lower the learning rate or check the Hessian dataset."
            )
        self._remember_gradient(total[-1], total[m * self.dim : -1])
        return products.T.contiguous()

    def _versions(self) -> tuple[int, ...]:
        # Every in-place change of a parameter (optimizer step, load_state_dict, SAM perturbation) bumps its version.
        return tuple(p._version for p in self.params)

    def _remember_gradient(self, loss: torch.Tensor, grad: torch.Tensor) -> None:
        self._gradient_cache = (self._versions(), float(loss.item()), grad.clone())

    def loss_and_gradient(self) -> tuple[float, torch.Tensor]:
        """Mean loss and its gradient ``[d]`` over the whole Hessian dataset (all ranks).

        Computed under the same conditions as the products (eval mode, full precision), so it is the gradient
        whose alignment with the dominant subspace the paper measures. Every product pass computes it too; if the
        parameters have not changed since the last pass, that result is returned without another pass.
        """
        cache = getattr(self, "_gradient_cache", None)
        if cache is not None and cache[0] == self._versions():
            return cache[1], cache[2].clone()
        total = torch.zeros(self.dim + 1, dtype=self.dtype, device=self.device)
        grad_parts = split_like(total[1:], self.params)
        with _exact_mode(self.model, self.eval_mode, self.device):
            for n, batch in self._iter_batches("full-batch gradient"):
                loss = self._batch_loss(batch)
                total[0] += n * loss.detach()
                if not loss.requires_grad:
                    continue
                grads = torch.autograd.grad(loss, self.params, allow_unused=True)
                for out, g in zip(grad_parts, grads):
                    if g is not None:
                        out.add_(g, alpha=n)
        self._reduce(total)
        self.num_passes += 1
        self._remember_gradient(total[0], total[1:])
        return float(total[0].item()), total[1:].clone()

    def loss(self) -> float:
        """Mean loss over the whole Hessian dataset (all ranks), without gradients."""
        total = torch.zeros(1, dtype=torch.float64, device=self.device)
        with _exact_mode(self.model, self.eval_mode, self.device), torch.no_grad():
            for n, batch in self._iter_batches("loss"):
                total += n * self._batch_loss(batch).double()
        return float(self._reduce(total).item())
