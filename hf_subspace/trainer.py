"""`SubspaceTrainer`: a drop-in `transformers.Trainer` with dominant- or bulk-projected updates.

The trainer supplies what the per-step schedule needs and hands it to a
:class:`~hf_subspace.callback.SubspaceCallback` (which holds the schedule, see its module docstring): the covered
parameters, the :class:`~hf_subspace.hessian.HessianOperator` of its own loss over the Hessian dataset, the SAM step
(gradient at θ kept for the metrics), and the subspace state in every checkpoint.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import PreTrainedModel, Trainer

from . import distributed
from ._fsdp import vector_layout
from ._hessian_set import (
    build_hessian_batches,
    choose_hessian_loss,
    hessian_seed,
    hessian_subset_indices,
    isolated_rng,
)
from ._model_state import is_fsdp2
from ._params import select_parameters
from ._shards import LocalShards, RowShard
from .callback import SubspaceCallback, SubspaceState, tensorboard_writers
from .hessian import HessianOperator, LossFn, unwrap_model
from .metrics import AlignmentEMA
from .optim import SAM
from .subspace import SubspaceBasis
from .tracking import refresh_schedule
from .training_args import SubspaceTrainingArguments

__all__ = [
    "SUBSPACE_STATE_NAME",
    "SubspaceTrainer",
    "SubspaceTrainerMixin",
    "hessian_subset_indices",
    "load_subspace_state",
    "save_subspace_state",
]

logger = logging.getLogger(__name__)

SUBSPACE_STATE_NAME = "subspace_state.pt"
ROWS_FILE = "subspace_rows-{rank:05d}-of-{world:05d}.pt"
"""One process's rows of a split basis and warm start, beside ``subspace_state.pt``."""

# The mixin is typed as a Trainer for the checker; at run time it derives from object and goes first in the bases.
if TYPE_CHECKING:
    _TrainerBase = Trainer
else:
    _TrainerBase = object


class SubspaceTrainerMixin(_TrainerBase):
    """Adds dominant- / bulk-subspace projection to any `transformers.Trainer` subclass (put it first in the bases).

    ``SubspaceTrainer`` is ``SubspaceTrainerMixin`` + ``Trainer``. For another trainer, combine its arguments class
    with :class:`SubspaceTrainingArguments` the same way::

        @dataclasses.dataclass
        class SubspaceSFTConfig(SubspaceTrainingArguments, trl.SFTConfig): ...

        class SubspaceSFTTrainer(SubspaceTrainerMixin, trl.SFTTrainer): ...

    (``Seq2SeqTrainer`` with ``Seq2SeqTrainingArguments`` likewise.) The Hessian is of the loss that trainer's
    ``compute_loss`` optimises, checked on the first Hessian batch at construction (see
    :func:`~hf_subspace._hessian_set.choose_hessian_loss`).

    Args:
        *args, **kwargs: as for the trainer; ``args`` must be an instance of :class:`SubspaceTrainingArguments`.
        hessian_dataset: the data on which the Hessian, full-batch gradient and full training loss are computed: a
            map-style or iterable dataset (collated by the trainer's ``data_collator``, whose labels may be made by
            the collator), a ``DataLoader``, or a list of collated batches. Default: a fixed subset of
            ``train_dataset`` of ``hessian_num_samples`` examples chosen with ``hessian_seed`` (the first
            ``hessian_num_samples`` of an iterable one). Each process takes its own contiguous shard; products are
            reduced across processes. Building it leaves the global random state untouched.

    Raises:
        ValueError: at construction (before any training) for invalid subspace settings, e.g. ``subspace_k`` not
            below the number of covered parameters, or Hessian batches that give the model no loss.
        RuntimeError: at construction, a training loss that is not twice differentiable (e.g. CTC).
    """

    args: SubspaceTrainingArguments

    def __init__(self, *args: Any, hessian_dataset: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, SubspaceTrainingArguments):
            raise TypeError(
                f"{type(self).__name__} needs SubspaceTrainingArguments, got {type(self.args).__name__}; "
                "replace TrainingArguments(...) by SubspaceTrainingArguments(...) (for another trainer's arguments "
                "class, a dataclass deriving from both)."
            )
        if self.model is None:
            raise ValueError("SubspaceTrainer needs a model (model_init is not supported).")
        self.hessian_dataset = hessian_dataset
        named = select_parameters(self.model, self.args.subspace_parameter_filter)
        self.subspace_param_names = [n for n, _ in named]
        self.subspace_params = [p for _, p in named]
        dim = sum(p.numel() for p in self.subspace_params)
        schedule = refresh_schedule(self.args)
        num_vectors = schedule.num_eigenpairs(self.args.subspace_k, self.args.subspace_extra_eigenvalues)
        if num_vectors >= dim:
            extra = num_vectors - self.args.subspace_k
            raise ValueError(
                f"subspace_k={self.args.subspace_k} (+ {extra} extra eigenvalue(s): subspace_extra_eigenvalues, or "
                "1 for subspace_basis_tol) must be smaller than the number of covered parameters "
                f"d={dim}; lower subspace_k or widen subspace_parameter_filter."
            )
        if self.args.subspace_graph_cache_bytes and self.subspace_shard_vectors:
            raise ValueError(
                f"subspace_graph_cache_bytes={self.args.subspace_graph_cache_bytes}: graphs are kept for whole vectors "
                f"only, but with {distributed.world_size()} processes the solver's vectors are split "
                "(subspace_shard_vectors, the default with several processes). "
                "Set subspace_shard_vectors=False, or leave subspace_graph_cache_bytes unset."
            )
        batches = self._hessian_batches()
        metrics = copy.deepcopy(getattr(self, "_metrics", None))  # TRL trainers record metrics in compute_loss
        loss_fn: LossFn = self._hessian_loss
        if batches:  # a rank may hold no batch of a tiny set; the operator's reduction covers it
            with isolated_rng(hessian_seed(self.args)):  # dropout is off, but a model's forward may still draw
                loss_fn = choose_hessian_loss(self.model, batches[0], self.subspace_params, self._hessian_loss)
        if metrics is not None:
            self._metrics = metrics
        warn_batch_dependent_loss(self.model)
        self.hessian_operator = HessianOperator(
            self.model,
            batches,
            loss_fn,
            params=self.subspace_params,
            progress=self.args.subspace_progress,
            shard_vectors=self.subspace_shard_vectors,
            graph_cache_bytes=self.args.subspace_graph_cache_bytes,
        )
        self.subspace_state = SubspaceState(AlignmentEMA(decay=self.args.subspace_ema_decay), schedule)
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
        if self.args.subspace_trace_steps:
            from .trace_logging import HessianTraceCallback

            every, matvecs = self.args.subspace_trace_steps, self.args.subspace_trace_matvecs
            trace_op = self.hessian_operator
            if trace_op.rows is not None:  # Hutch++ works on whole vectors: the same Hessian, unsplit
                trace_op = HessianOperator(
                    self.model,
                    batches,
                    loss_fn,
                    params=self.subspace_params,
                    graph_cache_bytes=self.args.subspace_graph_cache_bytes,
                )
            self.add_callback(HessianTraceCallback(trace_op, every, matvecs, self.args.seed, self.log))

    @property
    def subspace_shard_vectors(self) -> bool:
        """Whether solver vectors and basis are split across processes (``subspace_shard_vectors``, resolved)."""
        shard = self.args.subspace_shard_vectors
        if shard is None:
            return distributed.world_size() > 1 and self.args.subspace_solver != "eigsh"
        return shard and distributed.world_size() > 1

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """`Trainer.train`, after checking that the covered parameters are still the trainable ones.

        Raises:
            ValueError: parameters were frozen or unfrozen after the trainer was built.
        """
        self._check_covered_parameters()
        try:
            return super().train(*args, **kwargs)
        finally:  # FSDP2 replaced the parameters by DTensors inside train(): the callback follows them
            self.subspace_params = self.subspace_callback.params

    def _check_covered_parameters(self) -> None:
        frozen = [n for n, p in zip(self.subspace_param_names, self.subspace_params) if not p.requires_grad]
        covered = set(self.subspace_param_names)
        try:
            trainable = select_parameters(unwrap_model(self.model), self.args.subspace_parameter_filter)  # type: ignore[arg-type]
        except ValueError:
            trainable = []
        unfrozen = [n for n, _ in trainable if n not in covered]
        if frozen or unfrozen:
            raise ValueError(
                f"Parameters were frozen ({frozen[:3]}) or unfrozen ({unfrozen[:3]}) after {type(self).__name__} "
                "was built; the subspace covers the parameters trainable at construction. Set requires_grad before "
                "building the trainer."
            )

    # -- the Hessian dataset and loss -------------------------------------------------------------------------
    def _hessian_batches(self) -> list[Any]:
        dataset, subset = self.hessian_dataset, False
        if dataset is None:
            dataset, subset = self.train_dataset, True
            if dataset is None:
                raise ValueError("SubspaceTrainer needs a train_dataset or a hessian_dataset to build the Hessian.")
        batches = build_hessian_batches(self, dataset, subset=subset)
        if not batches and distributed.world_size() == 1:
            raise ValueError("The Hessian dataset is empty; pass a hessian_dataset with at least one example.")
        return batches

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
            self.subspace_state.scratch.raw_grads = [
                None if p.grad is None else p.grad.detach().clone() for p in self.subspace_params
            ]
        sam.first_step(zero_grad=True)
        super().training_step(model, inputs, num_items_in_batch)
        return loss

    # -- checkpoints -----------------------------------------------------------------------------------------
    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """The Trainer's checkpoint plus ``subspace_state.pt`` (see :func:`save_subspace_state`)."""
        super()._save_checkpoint(model, trial)
        folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
        layout = vector_layout(self.hessian_operator)
        save_subspace_state(folder, self.subspace_state.state_dict(), layout, self.args.should_save)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        target = model if model is not None else self.model
        # A transformers model is loaded through from_pretrained (key mapping included) instead of the Trainer's plain
        # load, which warns about every renamed key of e.g. ViT before the weights are loaded correctly anyway.
        if target is None or is_fsdp2(target) or not _load_converted_weights(target, resume_from_checkpoint):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, SUBSPACE_STATE_NAME)
        if os.path.isfile(path):
            self.subspace_callback.follow_sharding()  # FSDP2 loads after sharding the model: the basis' layout
            device = self.subspace_callback.params[0].device
            state = load_subspace_state(resume_from_checkpoint, vector_layout(self.hessian_operator), device)
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


def _load_converted_weights(model: nn.Module, checkpoint: str) -> bool:
    """Load a checkpoint's weights into ``model`` through ``from_pretrained`` (its key-conversion mapping included).

    ``Trainer._load_from_checkpoint`` (transformers 5.24) reads the checkpoint with a plain ``load_state_dict``,
    without the conversion mapping that ``save_pretrained`` reverses: for models whose module names were renamed in
    transformers 5 (ViT: ``vit.encoder.layer.N.attention.attention.query`` on disk, ``vit.layers.N.attention.q_proj``
    in memory) no key matches and a resumed run would silently restart from the initial weights. Loading through
    ``from_pretrained`` applies the mapping; optimizer, scheduler, RNG and subspace state are resumed as usual.

    Returns:
        True when the weights were loaded this way (a ``PreTrainedModel`` and a checkpoint with ``config.json``).

    Raises:
        RuntimeError: the checkpoint's weights do not match the model (missing or unexpected keys).
    """
    model = unwrap_model(model)
    if not isinstance(model, PreTrainedModel) or not os.path.isfile(os.path.join(checkpoint, "config.json")):
        return False
    loaded = type(model).from_pretrained(checkpoint, config=model.config)
    state = loaded.state_dict()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f"The checkpoint {checkpoint} does not match the model: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}; resume with the model the checkpoint was saved from."
        )
    logger.info("Resumed the model's %d weight tensors from %s.", len(state), checkpoint)
    return True


def warn_batch_dependent_loss(model: nn.Module) -> None:
    """Warn when the model's loss includes a per-batch term, so that its Hessian depends on ``hessian_batch_size``.

    A Mixture-of-Experts router's load-balancing loss (``output_router_logits`` with ``router_aux_loss_coef > 0``)
    is computed from each batch's routing statistics, not as a mean over loss items.
    """
    config = getattr(unwrap_model(model), "config", None)
    get_text = getattr(config, "get_text_config", None)
    config = get_text() if callable(get_text) else config
    coef = getattr(config, "router_aux_loss_coef", 0.0) or 0.0
    if getattr(config, "output_router_logits", False) and coef > 0:
        logger.warning(
            "The model adds a router auxiliary loss (output_router_logits=True, router_aux_loss_coef=%g) computed per "
            "batch, so its Hessian depends on hessian_batch_size (and the number of processes): set "
            "hessian_batch_size to the per-device training batch size for the loss the optimizer sees.",
            coef,
        )


class SubspaceTrainer(SubspaceTrainerMixin, Trainer):
    """`transformers.Trainer` that projects updates onto (or out of) the dominant Hessian subspace.

    Takes the arguments of `transformers.Trainer` plus ``hessian_dataset``; ``args`` must be
    :class:`SubspaceTrainingArguments`. See :class:`SubspaceTrainerMixin` for the Hessian set, the loss and errors.
    """


def save_subspace_state(
    folder: str, state: dict[str, Any], layout: RowShard | LocalShards | None, main: bool = True
) -> None:
    """Write a :meth:`SubspaceState.state_dict` into a checkpoint ``folder``: ``subspace_state.pt`` (by the main
    process, ``main``); with split vectors (rows across several processes, or FSDP2 shards) every process also writes
    its rows of the basis and of the warm start (``subspace_rows-<rank>-of-<world>.pt``, with the global rows it
    holds), which a resume with any number of processes and any layout reassembles (:func:`load_subspace_state`).
    Every process must call it."""
    split = isinstance(layout, LocalShards) or (layout is not None and layout.world > 1)
    if split:
        assert layout is not None
        part: dict[str, Any] = {"dim": layout.dim, "warm_start": state["warm_start"]}
        if isinstance(layout, LocalShards):
            part["index"] = layout.index
        else:
            part["start"], part["stop"] = layout.start, layout.stop
        part["vectors"] = None if state["basis"] is None else state["basis"]["vectors"]
        os.makedirs(folder, exist_ok=True)
        torch.save(part, os.path.join(folder, ROWS_FILE.format(rank=layout.rank, world=layout.world)))
        state = dict(state)
        if state["basis"] is not None:
            state["basis"] = {**state["basis"], "vectors": None, "rows": None}
        state["warm_start"], state["row_files"] = None, layout.world
    if main and os.path.isdir(folder):
        torch.save(state, os.path.join(folder, SUBSPACE_STATE_NAME))


def load_subspace_state(checkpoint: str, rows: RowShard | LocalShards | None, device: torch.device) -> dict[str, Any]:
    """A checkpoint's subspace state with the basis and warm start laid out for this run: whole (``rows`` None),
    this process's rows of a split run, or its FSDP2 shards, whatever the number of processes and layout that saved it.

    A split checkpoint keeps each saving process's rows in its own file (``ROWS_FILE``). Between row splits only the
    files that overlap this process's rows are read; a resume into the same FSDP2 sharding reads its own file; any
    other change of layout with FSDP2 on either side assembles the full vectors once.
    """
    state = torch.load(os.path.join(checkpoint, SUBSPACE_STATE_NAME), map_location=device, weights_only=False)
    saved_world = state.pop("row_files", None)
    basis = state["basis"]
    targets = [(key, t) for key, t in (("vectors", basis), ("warm_start", state)) if t is not None]
    if saved_world is None:  # saved whole: keep this process's rows
        for key, target in targets:
            if target[key] is not None:
                target[key] = target[key] if rows is None else target[key][_rows_of(rows)]
    else:
        _assemble(checkpoint, state["settings"]["dim"], saved_world, rows, device, targets)
    if basis is not None:
        basis["rows"] = (
            None
            if rows is None
            else rows.state()
            if isinstance(rows, LocalShards)
            else (rows.dim, rows.world, rows.rank)
        )
    return state


def _rows_of(rows: RowShard | LocalShards) -> slice | torch.Tensor:
    return rows.index if isinstance(rows, LocalShards) else slice(rows.start, rows.stop)


def _assemble(
    checkpoint: str,
    dim: int,
    saved_world: int,
    rows: RowShard | LocalShards | None,
    device: torch.device,
    targets: list[tuple[str, dict[str, Any]]],
) -> None:
    """This run's rows of the split checkpoint's vectors, from the saving processes' row files (see above)."""
    file = lambda rank: os.path.join(checkpoint, ROWS_FILE.format(rank=rank, world=saved_world))  # noqa: E731
    load = lambda rank: torch.load(file(rank), map_location=device, weights_only=False)  # noqa: E731
    first = load(0)
    if isinstance(rows, LocalShards) and saved_world == rows.world and "index" in first:
        own = first if rows.rank == 0 else load(rows.rank)
        if torch.equal(own["index"].cpu(), rows.index.cpu()):  # the same sharding: this process's own file
            for key, target in targets:
                target[key] = None if own[key] is None else own[key].contiguous()
            return
    if "index" in first or isinstance(rows, LocalShards):  # a change of layout with FSDP2 shards: via full vectors
        parts = [first] + [load(rank) for rank in range(1, saved_world)]
        for key, target in targets:
            if first[key] is None:
                continue
            full = torch.empty(dim, *first[key].shape[1:], dtype=first[key].dtype, device=device)
            for part in parts:
                full[part["index"] if "index" in part else slice(part["start"], part["stop"])] = part[key]
            target[key] = full if rows is None else full[_rows_of(rows)].contiguous()
        return
    start, stop = (0, dim) if rows is None else (rows.start, rows.stop)
    saved = RowShard(dim, saved_world)
    parts = []
    for rank in range(saved_world):
        lo, hi = saved.bounds(rank)
        if max(lo, start) < min(hi, stop) or rank == 0:  # rank 0 too: a process without rows still gets k
            parts.append(first if rank == 0 else load(rank))
    for key, target in targets:
        if parts[0][key] is None:
            continue
        pieces = [p[key][max(0, start - p["start"]) : max(0, min(stop, p["stop"]) - p["start"])] for p in parts]
        target[key] = torch.cat(pieces).contiguous()
