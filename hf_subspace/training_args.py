"""`SubspaceTrainingArguments`: the Trainer's arguments plus the subspace-projection settings."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from transformers import TrainingArguments

__all__ = [
    "SOLVERS",
    "SUBSPACE_MODES",
    "SUBSPACE_TARGETS",
    "SolverName",
    "SubspaceMode",
    "SubspaceTarget",
    "SubspaceTrainingArguments",
]

SubspaceMode = Literal["none", "dominant", "bulk"]
SubspaceTarget = Literal["update", "gradient"]
SolverName = Literal["auto", "lobpcg", "lanczos", "eigsh"]
SUBSPACE_MODES: tuple[str, ...] = get_args(SubspaceMode)
SUBSPACE_TARGETS: tuple[str, ...] = get_args(SubspaceTarget)
SOLVERS: tuple[str, ...] = get_args(SolverName)
_LAYERWISE_OPTIMIZERS = ("layerwise", "lomo")


@dataclass
class SubspaceTrainingArguments(TrainingArguments):
    """`TrainingArguments` for :class:`~hf_subspace.SubspaceTrainer`.

    Every field carries ``metadata={"help": ...}``, so ``HfArgumentParser`` exposes it on the command line and in
    YAML / JSON configs. Values are validated in ``__post_init__``, before any training starts.
    """

    subspace_mode: SubspaceMode = field(
        default="none",
        metadata={
            "help": "Projection of each update: 'none' (plain training, alignment still measured), 'dominant' "
            "(keep only the part in the top-k Hessian eigenspace: Dom-SGD) or 'bulk' (remove it: Bulk-SGD).",
        },
    )
    subspace_k: int = field(
        default=10, metadata={"help": "Dimension k of the dominant subspace (the paper uses the number of classes)."}
    )
    subspace_start_step: int = field(
        default=0,
        metadata={"help": "Global step from which updates are projected; training before it is unprojected."},
    )
    subspace_auto_start: bool = field(
        default=False,
        metadata={
            "help": "Start projecting when the EMA of χ_k of the full-batch gradient exceeds "
            "subspace_auto_start_threshold (measured every subspace_alignment_steps), instead of at "
            "subspace_start_step. The switch step is logged and saved."
        },
    )
    subspace_auto_start_threshold: float = field(
        default=0.95, metadata={"help": "EMA level of χ_k of the full-batch gradient that triggers the switch."}
    )
    subspace_ema_decay: float = field(
        default=0.9, metadata={"help": "Decay factor of the χ_k exponential moving average (0 ≤ decay < 1)."}
    )
    subspace_refresh_steps: int = field(
        default=1,
        metadata={
            "help": "Recompute the top-k eigenvectors every N optimizer steps (1 = every step, as in the paper). "
            "With subspace_basis_tol set, N is the longest interval between refreshes."
        },
    )
    subspace_basis_tol: float | None = field(
        default=None,
        metadata={
            "help": "Certified tracking: the largest allowed distance ‖P_used − P_exact‖₂ (sine of the largest "
            "principal angle) between the basis in use and the exact top-k eigenspace at the current parameters, in "
            "(0, 1). The basis is then refreshed only when a cheap estimate (drift between refreshes, one-HVP "
            "residual probes with a Davis–Kahan bound) says it would exceed this; subspace_refresh_steps becomes the "
            "maximum interval. Default None: the fixed schedule of subspace_refresh_steps."
        },
    )
    subspace_target: SubspaceTarget = field(
        default="update",
        metadata={
            "help": "'update' (the paper's rule: the optimizer steps on the raw gradient, then the parameter change "
            "Δ is replaced by PΔ or Δ − PΔ; optimizer state untouched) or 'gradient' (project the gradient before "
            "the optimizer step).",
        },
    )
    subspace_parameter_filter: str | None = field(
        default=None,
        metadata={
            "help": "Regular expression on parameter names: the subspace (and the projection) covers only the "
            "matching trainable parameters. Default: all trainable parameters."
        },
    )
    subspace_extra_eigenvalues: int = field(
        default=0,
        metadata={
            "help": "Also compute this many eigenvalues beyond the top k at each refresh and log them (k gives the "
            "(k+1)..(2k)-th, the evidence of the low-rank structure; costs extra Hessian-vector products)."
        },
    )
    subspace_alignment_steps: int | None = field(
        default=None,
        metadata={
            "help": "Measure full-batch-gradient alignment, full training loss and effective learning rates every N "
            "steps (one extra pass over the Hessian dataset). Default: logging_steps. 0 turns it off."
        },
    )
    hessian_num_samples: int = field(
        default=1000,
        metadata={
            "help": "Size of the fixed, seeded subset of the training set on which the Hessian (and the full-batch "
            "gradient and loss) is computed; larger than the training set means all of it."
        },
    )
    hessian_batch_size: int = field(
        default=250,
        metadata={
            "help": "Batch size of the Hessian passes (memory bound; does not change the Hessian unless the loss has "
            "a per-batch term, such as a Mixture-of-Experts router's auxiliary loss)."
        },
    )
    hessian_seed: int | None = field(
        default=None, metadata={"help": "Seed of the Hessian subset selection. Default: the training seed."}
    )
    subspace_solver: SolverName = field(
        default="auto",
        metadata={
            "help": "Eigensolver: 'auto' (Lanczos for the first basis, warm-started LOBPCG for refreshes), "
            "'lobpcg', 'lanczos' (about half of a warm LOBPCG's memory at k = 10: for models near the memory limit) "
            "or 'eigsh' (scipy ARPACK, the paper's baseline). Refreshes warm-start from the previous basis.",
        },
    )
    subspace_solver_tol: float | None = field(
        default=None,
        metadata={"help": "Relative residual tolerance of the eigensolver. Default: 1e-3 in float32, 1e-6 in float64."},
    )
    subspace_solver_max_iters: int | None = field(
        default=None, metadata={"help": "Iteration limit of the eigensolver. Default: the solver's own."}
    )
    subspace_shard_vectors: bool | None = field(
        default=None,
        metadata={
            "help": "Split the eigensolver's vectors and the dominant basis across the processes (each holds 1/N of "
            "every vector, so a refresh's memory per process falls N-fold). Default: on with more than one process, "
            "except with subspace_solver='eigsh' (ARPACK needs whole vectors). Results are those of whole vectors.",
        },
    )
    subspace_progress: bool = field(
        default=False, metadata={"help": "Show tqdm progress bars for Hessian passes and eigensolves."}
    )
    subspace_graph_cache_bytes: int | None = field(
        default=None,
        metadata={
            "help": "Memory budget in bytes for keeping the Hessian batches' first-order graphs between the "
            "Hessian-vector products of one refresh, audit or trace estimate (later products then skip the forward "
            "pass and first backward; results are unchanged). Default None: a quarter of the free memory; 0 turns "
            "it off (a model near the memory limit). Whole vectors only: a positive value is refused where the "
            "vectors are split (subspace_shard_vectors with several processes) and with FSDP2."
        },
    )
    subspace_trace_steps: int = field(
        default=0,
        metadata={
            "help": "Log the Hutch++ estimate of the Hessian trace (hessian_trace, hessian_trace_stderr) every N "
            "optimizer steps, e.g. to TensorBoard; 0 = off. Costs subspace_trace_matvecs Hessian-vector products."
        },
    )
    subspace_trace_matvecs: int = field(
        default=30, metadata={"help": "Hessian-vector products per trace estimate (at least 4)."}
    )
    sam_rho: float = field(
        default=0.0,
        metadata={
            "help": "If > 0, wrap the optimizer chosen by --optim in SAM (Foret et al. 2021) with this radius ρ; the "
            "ascent step uses the raw minibatch gradient and the projection acts on the final update."
        },
    )
    sam_adaptive: bool = field(default=False, metadata={"help": "Use adaptive SAM (ASAM) scaling |θ|."})

    def __post_init__(self) -> None:
        # Our checks first: they are plain field checks, and a DeepSpeed / FSDP setting must be refused with our
        # message rather than fail later inside TrainingArguments' own set-up.
        self.validate_subspace_arguments()
        super().__post_init__()
        config = self.fsdp_config if isinstance(self.fsdp_config, dict) else {}
        if self.fsdp and int(config.get("version", 2)) != 2:
            raise ValueError(
                "SubspaceTrainer supports FSDP2 only (fsdp_config={'version': 2}, the default); FSDP1 wraps the "
                "parameters in flat shards the Hessian cannot follow. Set version 2, or use DDP."
            )
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched > 1 and self.world_size != launched:
            raise ValueError(
                f"This process was launched as one of WORLD_SIZE={launched} processes, but the Trainer set up "
                f"{self.world_size}: each process would train alone. On a machine without a GPU pass use_cpu=True "
                "(--use_cpu) so the processes join one gloo process group."
            )

    def validate_subspace_arguments(self) -> None:
        """Check the subspace options; every message names the option and how to fix it."""

        def fail(message: str) -> None:
            raise ValueError(message)

        # The Literal choices are checked by HfArgumentParser on the command line; this also covers Python, YAML and
        # JSON values.
        for name, choices in (
            ("subspace_mode", SUBSPACE_MODES),
            ("subspace_target", SUBSPACE_TARGETS),
            ("subspace_solver", SOLVERS),
        ):
            if getattr(self, name) not in choices:
                fail(f"{name}={getattr(self, name)!r} is not one of {list(choices)}.")
        if self.subspace_shard_vectors and self.subspace_solver == "eigsh":
            fail(
                "subspace_shard_vectors=True cannot be used with subspace_solver='eigsh' (ARPACK needs whole vectors); "
                "choose subspace_solver='auto', 'lanczos' or 'lobpcg', or set subspace_shard_vectors=False."
            )
        if self.subspace_k < 1:
            fail(f"subspace_k={self.subspace_k} must be at least 1 (the paper uses the number of classes).")
        if self.subspace_refresh_steps < 1:
            fail(f"subspace_refresh_steps={self.subspace_refresh_steps} must be at least 1 (1 = every step).")
        if self.subspace_basis_tol is not None and not 0.0 < self.subspace_basis_tol < 1.0:
            fail(
                f"subspace_basis_tol={self.subspace_basis_tol} must be in (0, 1) (a sine of a principal angle, e.g. "
                "0.05), or None for the fixed refresh schedule."
            )
        if self.subspace_start_step < 0:
            fail(f"subspace_start_step={self.subspace_start_step} must be >= 0.")
        if not 0.0 < self.subspace_auto_start_threshold <= 1.0:
            fail(f"subspace_auto_start_threshold={self.subspace_auto_start_threshold} must be in (0, 1].")
        if not 0.0 <= self.subspace_ema_decay < 1.0:
            fail(f"subspace_ema_decay={self.subspace_ema_decay} must be in [0, 1).")
        if self.subspace_trace_steps < 0 or self.subspace_trace_matvecs < 4:
            fail(
                f"subspace_trace_steps={self.subspace_trace_steps} must be >= 0 (0 = off) and "
                f"subspace_trace_matvecs={self.subspace_trace_matvecs} at least 4 (Hutch++)."
            )
        if self.subspace_graph_cache_bytes is not None and self.subspace_graph_cache_bytes < 0:
            fail(
                f"subspace_graph_cache_bytes={self.subspace_graph_cache_bytes} must be >= 0 (0 turns graph reuse off), "
                "or None for the default budget."
            )
        if self.subspace_extra_eigenvalues < 0:
            fail(f"subspace_extra_eigenvalues={self.subspace_extra_eigenvalues} must be >= 0.")
        if self.subspace_alignment_steps is not None and self.subspace_alignment_steps < 0:
            fail(f"subspace_alignment_steps={self.subspace_alignment_steps} must be >= 0 (0 turns it off).")
        if self.subspace_auto_start and self.subspace_alignment_steps == 0:
            fail("subspace_auto_start needs alignment measurements: set subspace_alignment_steps >= 1.")
        if self.hessian_num_samples < 1:
            fail(f"hessian_num_samples={self.hessian_num_samples} must be at least 1.")
        if self.hessian_batch_size < 1:
            fail(f"hessian_batch_size={self.hessian_batch_size} must be at least 1.")
        if self.subspace_parameter_filter:
            import re

            try:
                re.compile(self.subspace_parameter_filter)
            except re.error as err:
                fail(f"subspace_parameter_filter={self.subspace_parameter_filter!r} is not a regular expression: {err}")
        if self.sam_rho < 0:
            fail(f"sam_rho={self.sam_rho} must be >= 0 (0 turns SAM off).")
        if self.sam_rho > 0 and self.gradient_accumulation_steps > 1:
            fail(
                "sam_rho > 0 with gradient_accumulation_steps > 1 is not supported: the SAM ascent step needs the "
                "whole minibatch gradient. Use a larger per-device batch instead."
            )
        if self.deepspeed:
            fail(
                "SubspaceTrainer does not support DeepSpeed (ZeRO shards parameters and gradients, so the Hessian and "
                "the projection would be computed on shards). Remove --deepspeed and use DDP (accelerate launch "
                "--multi_gpu or torchrun)."
            )
        if self.fsdp:
            _check_fsdp2(self, fail)
        optim = str(getattr(self.optim, "value", self.optim))
        if any(tag in optim for tag in _LAYERWISE_OPTIMIZERS):
            fail(
                f"optim={optim!r} steps each layer inside the backward pass, so there is no whole update to project. "
                "Choose a standard optimizer (sgd, adamw_torch, ...)."
            )

    @property
    def alignment_steps(self) -> int:
        """Resolved interval of full-batch alignment measurements (0 = never)."""
        if self.subspace_alignment_steps is not None:
            return self.subspace_alignment_steps
        steps = self.logging_steps
        return int(steps) if steps >= 1 else 1


def _check_fsdp2(args: SubspaceTrainingArguments, fail: Callable[[str], None]) -> None:
    """Refuse what the subspace schedule cannot do on an FSDP2-sharded model (``fsdp`` set; accelerate applies it on
    GPUs only: on CPU it trains with DDP). Products there are finite differences of the engine's full-precision
    gradients, and vectors are each process's parameter shards."""
    config = args.fsdp_config if isinstance(args.fsdp_config, dict) else {}
    raw: Any = args.fsdp
    options = raw.split() if isinstance(raw, str) else list(raw) if isinstance(raw, (list, tuple)) else []
    refused = {
        "sam_rho > 0 (SAM)": args.sam_rho > 0,
        "subspace_solver='eigsh' (ARPACK needs whole vectors)": args.subspace_solver == "eigsh",
        "subspace_shard_vectors=False (vectors are the parameter shards)": args.subspace_shard_vectors is False,
        "subspace_trace_steps > 0 (the trace estimate needs whole vectors)": args.subspace_trace_steps > 0,
        "subspace_graph_cache_bytes > 0 (graphs are kept for whole vectors only)": bool(
            args.subspace_graph_cache_bytes
        ),
        "bf16 / fp16 (finite-difference products need full-precision gradients)": bool(args.bf16 or args.fp16),
        "CPU offload (fsdp 'offload' / cpu_offload)": "offload" in options
        or str(config.get("cpu_offload", config.get("fsdp_cpu_offload", False))).lower() == "true",
    }
    bad = [name for name, hit in refused.items() if hit]
    if bad:
        fail(
            f"SubspaceTrainer with FSDP2 (fsdp={args.fsdp!r}) does not support {'; '.join(bad)}. Remove those "
            "settings, or train with DDP (accelerate launch --multi_gpu or torchrun) without fsdp."
        )
