"""`SubspaceTrainer`: a drop-in `transformers.Trainer` with dominant- or bulk-projected updates.

The trainer supplies what the per-step schedule needs and hands it to a
:class:`~hf_subspace.callback.SubspaceCallback` (which holds the schedule, see its module docstring): the covered
parameters, the :class:`~hf_subspace.hessian.HessianOperator` of its own loss over the Hessian dataset, the SAM step
(gradient at θ kept for the metrics), and the subspace state in every checkpoint.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel, Trainer

from . import distributed
from ._params import select_parameters
from ._shards import RowShard
from .callback import SubspaceCallback, SubspaceState, tensorboard_writers
from .hessian import HessianOperator, unwrap_model
from .metrics import AlignmentEMA
from .optim import SAM
from .subspace import SubspaceBasis
from .training_args import SubspaceTrainingArguments

__all__ = ["SUBSPACE_STATE_NAME", "SubspaceTrainer", "hessian_subset_indices", "load_subspace_state"]

logger = logging.getLogger(__name__)

SUBSPACE_STATE_NAME = "subspace_state.pt"
ROWS_FILE = "subspace_rows-{rank:05d}-of-{world:05d}.pt"
"""One process's rows of a split basis and warm start, beside ``subspace_state.pt``."""


def hessian_subset_indices(num_examples: int, args: SubspaceTrainingArguments) -> np.ndarray:
    """Indices of the default Hessian dataset among ``num_examples`` training examples (sorted).

    All of them when ``args.hessian_num_samples >= num_examples``; otherwise a choice without replacement of
    ``hessian_num_samples`` drawn with seed ``args.hessian_seed`` (default ``args.seed``), so every run, resume and
    process of an experiment computes the Hessian on the same examples.
    """
    if args.hessian_num_samples >= num_examples:
        return np.arange(num_examples)
    seed = args.seed if args.hessian_seed is None else args.hessian_seed
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_examples, size=args.hessian_num_samples, replace=False))


class SubspaceTrainer(Trainer):
    """`transformers.Trainer` that projects updates onto (or out of) the dominant Hessian subspace.

    Args:
        *args, **kwargs: as for `transformers.Trainer`; ``args`` must be :class:`SubspaceTrainingArguments`.
        hessian_dataset: dataset on which the Hessian, full-batch gradient and full training loss are computed.
            Default: a fixed subset of ``train_dataset`` of ``hessian_num_samples`` examples chosen with
            ``hessian_seed``. Each process takes its own contiguous shard; products are reduced across processes.

    Raises:
        ValueError: at construction (before any training) for invalid subspace settings, e.g. ``subspace_k`` not
            below the number of covered parameters, or a Hessian dataset without labels.
    """

    args: SubspaceTrainingArguments

    def __init__(self, *args: Any, hessian_dataset: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, SubspaceTrainingArguments):
            raise TypeError(
                f"SubspaceTrainer needs SubspaceTrainingArguments, got {type(self.args).__name__}; "
                "replace TrainingArguments(...) by SubspaceTrainingArguments(...)."
            )
        if self.model is None:
            raise ValueError("SubspaceTrainer needs a model (model_init is not supported).")
        self.hessian_dataset = hessian_dataset
        named = select_parameters(self.model, self.args.subspace_parameter_filter)
        self.subspace_param_names = [n for n, _ in named]
        self.subspace_params = [p for _, p in named]
        dim = sum(p.numel() for p in self.subspace_params)
        # Certified tracking (subspace_basis_tol) solves for at least one eigenpair beyond k (the spectral gap).
        extra = max(self.args.subspace_extra_eigenvalues, int(self.args.subspace_basis_tol is not None))
        num_vectors = self.args.subspace_k + extra
        if num_vectors >= dim:
            raise ValueError(
                f"subspace_k={self.args.subspace_k} (+ {extra} extra eigenvalue(s): subspace_extra_eigenvalues, or "
                "1 for subspace_basis_tol) must be smaller than the number of covered parameters "
                f"d={dim}; lower subspace_k or widen subspace_parameter_filter."
            )
        self.hessian_operator = HessianOperator(
            self.model,
            self._hessian_batches(),
            self._hessian_loss,
            params=self.subspace_params,
            progress=self.args.subspace_progress,
            shard_vectors=self.subspace_shard_vectors,
        )
        self.subspace_state = SubspaceState(ema=AlignmentEMA(decay=self.args.subspace_ema_decay))
        self.subspace_callback = SubspaceCallback(
            self.hessian_operator,
            self.subspace_params,
            self.args,
            log=self.log,
            state=self.subspace_state,
            param_names=self.subspace_param_names,
            sam_optimizer=self.sam_optimizer,
            tensorboard=lambda: tensorboard_writers(self.callback_handler.callbacks),
        )
        self.add_callback(self.subspace_callback)

    @property
    def subspace_shard_vectors(self) -> bool:
        """Whether solver vectors and basis are split across processes (``subspace_shard_vectors``, resolved)."""
        shard = self.args.subspace_shard_vectors
        if shard is None:
            return distributed.world_size() > 1 and self.args.subspace_solver != "eigsh"
        return shard and distributed.world_size() > 1

    # -- the Hessian dataset and loss -------------------------------------------------------------------------
    def _hessian_batches(self) -> list[Any]:
        args = self.args
        dataset = self.hessian_dataset
        if dataset is None:
            dataset = self.train_dataset
            if dataset is None:
                raise ValueError("SubspaceTrainer needs a train_dataset or a hessian_dataset to build the Hessian.")
            try:
                n = len(dataset)  # type: ignore[arg-type]  # an IterableDataset raises TypeError below
            except TypeError:
                raise ValueError(
                    "The train dataset has no length (an IterableDataset); pass hessian_dataset= with a fixed set of "
                    "examples for the Hessian."
                ) from None
            indices = hessian_subset_indices(n, args)
        else:
            indices = np.arange(len(dataset))
        if hasattr(dataset, "column_names"):
            if "labels" not in dataset.column_names and "label" not in dataset.column_names:
                raise ValueError(
                    f"The Hessian dataset has no 'labels' column (columns: {dataset.column_names}); the Hessian is of "
                    "the training loss, which needs labels. Pass hessian_dataset= with labels."
                )
            dataset = self._remove_unused_columns(dataset, description="hessian")
        # Each rank takes a contiguous shard; products are summed across ranks weighted by loss-item counts.
        shard = np.array_split(indices, distributed.world_size())[distributed.rank()]
        size = args.hessian_batch_size
        collator = self.data_collator
        # Built without a DataLoader: iterating one draws from the global RNG and would change the training run.
        return [collator([dataset[int(i)] for i in shard[s : s + size]]) for s in range(0, len(shard), size)]

    def _hessian_loss(
        self, model: nn.Module, batch: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        # The trainer's own loss (custom compute_loss / compute_loss_func / label smoothing included), given the
        # batch's own loss-item count as num_items_in_batch, so it is the batch's mean over its items whether or not
        # the loss divides by that count; the operator weights batches by the count (the mean over all items of the
        # Hessian set, as the Trainer's gradient accumulation does). transformers 5 multiplies the loss by the number
        # of processes when average_tokens_across_devices is on (it averages gradients, not losses): switched off here.
        args = self.args
        averaging = getattr(args, "average_tokens_across_devices", False)
        if averaging:
            args.average_tokens_across_devices = False
        try:
            loss = self.compute_loss(model, dict(batch), num_items_in_batch=num_items_in_batch)
        finally:
            if averaging:
                args.average_tokens_across_devices = averaging
        if isinstance(loss, tuple):
            loss = loss[0]
        return loss.mean() if loss.dim() else loss

    # -- optimizers ------------------------------------------------------------------------------------------
    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The Trainer's optimizer, wrapped in :class:`~hf_subspace.optim.SAM` when ``sam_rho > 0``."""
        if self.optimizer is not None or self.args.sam_rho <= 0:
            return super().create_optimizer(model)
        base = super().create_optimizer(model)
        base_cls, base_defaults = type(base), dict(base.defaults)
        self.optimizer = SAM(
            base.param_groups,
            base_optimizer=lambda groups: base_cls(groups, **base_defaults),
            rho=self.args.sam_rho,
            adaptive=self.args.sam_adaptive,
        )
        return self.optimizer

    def sam_optimizer(self) -> SAM | None:
        """The SAM instance behind the (possibly accelerate-wrapped) optimizer, if any."""
        opt = self.optimizer
        while opt is not None and not isinstance(opt, SAM):
            opt = getattr(opt, "optimizer", None)
        return opt

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        sam = self.sam_optimizer()
        if sam is None:
            return super().training_step(model, inputs, num_items_in_batch)
        # SAM: gradient at θ (kept for the alignment metrics), ascent to θ + ε, gradient there. θ is restored in
        # on_pre_optimizer_step, so the optimizer steps from θ with the perturbed gradient.
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.subspace_state.basis is not None:
            self.subspace_state.raw_grads = [
                None if p.grad is None else p.grad.detach().clone() for p in self.subspace_params
            ]
        sam.first_step(zero_grad=True)
        super().training_step(model, inputs, num_items_in_batch)
        return loss

    # -- checkpoints -----------------------------------------------------------------------------------------
    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """The Trainer's checkpoint plus ``subspace_state.pt``; with split vectors every process also writes its rows
        of the basis and of the warm start (``subspace_rows-<rank>-of-<world>.pt``), which a resume in any number
        of processes reassembles (see :func:`load_subspace_state`)."""
        super()._save_checkpoint(model, trial)
        folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
        state = self.subspace_state.state_dict()
        rows = self.hessian_operator.rows
        if rows is not None and rows.world > 1:
            part = {"start": rows.start, "stop": rows.stop, "dim": rows.dim, "warm_start": state["warm_start"]}
            part["vectors"] = None if state["basis"] is None else state["basis"]["vectors"]
            os.makedirs(folder, exist_ok=True)
            torch.save(part, os.path.join(folder, ROWS_FILE.format(rank=rows.rank, world=rows.world)))
            if state["basis"] is not None:
                state["basis"] = {**state["basis"], "vectors": None, "rows": None}
            state["warm_start"], state["row_files"] = None, rows.world
        if self.args.should_save and os.path.isdir(folder):
            torch.save(state, os.path.join(folder, SUBSPACE_STATE_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        target = model if model is not None else self.model
        if target is not None:
            _load_converted_weights(target, resume_from_checkpoint)
        path = os.path.join(resume_from_checkpoint, SUBSPACE_STATE_NAME)
        if os.path.isfile(path):
            device = self.subspace_params[0].device
            state = load_subspace_state(resume_from_checkpoint, self.hessian_operator.rows, device)
            self.subspace_callback.load_state_dict(state)
        else:
            logger.warning(
                "%s has no %s: the subspace state starts afresh", resume_from_checkpoint, SUBSPACE_STATE_NAME
            )

    # -- model card ------------------------------------------------------------------------------------------
    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
        *,
        figures: list[tuple[str, str]] | None = None,
        description: str = "",
        notes: str = "",
    ) -> None:
        """Write ``output_dir/README.md``: the hf-subspace model card (Hub format, tagged ``hf-subspace``).

        Takes the arguments of `Trainer.create_model_card`, plus ``figures`` (``(path relative to output_dir,
        alt text)`` pairs), a ``description`` and ``notes`` (e.g. how a run differs from the paper's setup).
        """
        if not self.is_world_process_zero():
            return
        from .modelcard import build_card_info, render_model_card

        info = build_card_info(
            self.model,
            self.args,
            self.state,
            language=language,
            license=license,
            tags=tags,
            model_name=model_name,
            finetuned_from=finetuned_from,
            tasks=tasks,
            dataset_tags=dataset_tags,
            dataset=dataset,
            dataset_args=dataset_args,
            figures=figures,
            description=description,
            notes=notes,
        )
        card = render_model_card(self.subspace_summary(), info)
        output_dir = str(self.args.output_dir)
        os.makedirs(output_dir, exist_ok=True)
        card.save(os.path.join(output_dir, "README.md"))

    @property
    def subspace_basis(self) -> SubspaceBasis | None:
        """The :class:`~hf_subspace.SubspaceBasis` in use at the current step (None before the first refresh).

        Read-only: the schedule replaces it at each refresh (every ``subspace_refresh_steps``, or when certified
        tracking with ``subspace_basis_tol`` asks for one).
        """
        return self.subspace_state.basis

    def subspace_summary(self) -> dict[str, Any]:
        """Settings and results of the subspace run (for the model card and recipes)."""
        return self.subspace_callback.summary()


def _load_converted_weights(model: nn.Module, checkpoint: str) -> None:
    """Load a checkpoint's weights into ``model`` through ``from_pretrained`` (its key-conversion mapping included).

    ``Trainer._load_from_checkpoint`` (transformers 5.24) reads the checkpoint with a plain ``load_state_dict``,
    without the conversion mapping that ``save_pretrained`` reverses: for models whose module names were renamed in
    transformers 5 (ViT: ``vit.encoder.layer.N.attention.attention.query`` on disk, ``vit.layers.N.attention.q_proj``
    in memory) no key matches and a resumed run would silently restart from the initial weights. Loading through
    ``from_pretrained`` applies the mapping; optimizer, scheduler, RNG and subspace state are resumed as usual.

    Raises:
        RuntimeError: the checkpoint's weights do not match the model (missing or unexpected keys).
    """
    model = unwrap_model(model)
    if not isinstance(model, PreTrainedModel) or not os.path.isfile(os.path.join(checkpoint, "config.json")):
        return
    loaded = type(model).from_pretrained(checkpoint, config=model.config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f"The checkpoint {checkpoint} does not match the model: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}; resume with the model the checkpoint was saved from."
        )


def load_subspace_state(checkpoint: str, rows: RowShard | None, device: torch.device) -> dict[str, Any]:
    """A checkpoint's subspace state with the basis and warm start laid out for this run: whole (``rows`` None) or
    this process's rows of a split run, whatever the number of processes that saved it.

    A split-vector checkpoint keeps each saving process's rows in its own file (``ROWS_FILE``); only the files that
    overlap this process's rows are read.
    """
    state = torch.load(os.path.join(checkpoint, SUBSPACE_STATE_NAME), map_location=device, weights_only=False)
    saved_world = state.pop("row_files", None)
    basis = state["basis"]
    if saved_world is None:  # saved whole: keep this process's rows
        if rows is not None:
            if basis is not None:
                basis["vectors"] = basis["vectors"][rows.start : rows.stop]
            if state["warm_start"] is not None:
                state["warm_start"] = state["warm_start"][rows.start : rows.stop]
    else:
        dim = state["settings"]["dim"]
        start, stop = (0, dim) if rows is None else (rows.start, rows.stop)
        saved = RowShard(dim, saved_world)
        parts = []
        for rank in range(saved_world):
            lo, hi = saved.bounds(rank)
            if max(lo, start) < min(hi, stop) or rank == 0:  # rank 0 too: a process without rows still gets k
                file = os.path.join(checkpoint, ROWS_FILE.format(rank=rank, world=saved_world))
                parts.append(torch.load(file, map_location=device, weights_only=False))
        for key, target in (("vectors", basis), ("warm_start", state)):
            if target is None or parts[0][key] is None:
                continue
            pieces = [p[key][max(0, start - p["start"]) : max(0, min(stop, p["stop"]) - p["start"])] for p in parts]
            target[key] = torch.cat(pieces).contiguous()
    if basis is not None:
        basis["rows"] = None if rows is None else (rows.dim, rows.world, rows.rank)
    return state
