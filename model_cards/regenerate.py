"""Regenerate this repository's reference model cards (``model_cards/``): ``hf-subspace cards [--only RUN]``.

This script knows the repository's layout (the cards folder beside it, the offline data in ``../shared/data``) and
the list of reference runs; the machinery (running, card sections, the index, the claims) is
:mod:`hf_subspace.experiments.cards`, the command line :mod:`hf_subspace.experiments.cards_cli`. Run it from a checkout as ``hf-subspace cards`` (which finds this file in the
current folder, or the one given by ``--repo``) or as ``python model_cards/regenerate.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hf_subspace.experiments.cards import ReferenceRun
from hf_subspace.experiments.cards_cli import CardsRepository, cards_main
from hf_subspace.experiments.settings import QUICKSTART_MLP

__all__ = [
    "GD_PREFIX_RUN",
    "REFERENCE_RUNS",
    "UNAVAILABLE",
    "amplification_baseline",
    "default_data_root",
    "gd_prefix_run",
    "main",
    "regenerate",
]

CARDS_DIR = Path(__file__).resolve().parent
REPO_ROOT = CARDS_DIR.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
GD_PREFIX_RUN = "toy_quadratic_gd_prefix"
"""The reference run that answers "GD→SGD restores the alignment" (a GD prefix, then SGD and GD branches)."""


_QUICK = ("--max_steps", "12", "--switch_step", "6", "--subspace_alignment_steps", "3", "--subspace_refresh_steps", "3")
_TB_OFF = ("--report_to", "none")
SEEDS = (0, 1, 2)
"""The seeds of every multi-seed reference run (cards show their mean and spread)."""
_EMA = ("--switch_rule", "ema")
"""The paper's switch: once the χ_k EMA (decay 0.9) of the full-batch gradient reaches 0.95; ``--switch_step`` caps it."""


def _fresh(longest: int, audit: int) -> tuple[str, ...]:
    """Certified tracking (basis within 0.05 of the exact top-k eigenspace at every step, refreshes at most
    ``longest`` steps apart) and an exact check of the basis in use every ``audit`` projected steps."""
    return (
        "--subspace_basis_tol", "0.05", "--subspace_refresh_steps", str(longest),
        "--basis_audit_steps", str(audit),
    )  # fmt: skip


_RESUMABLE = ("--save_strategy", "steps", "--save_steps", "50", "--resume_experiment", "true")
"""For runs longer than a session: checkpoints every 50 steps, and a rerun of the same command reuses the finished
prefix and branches and resumes an unfinished branch from its latest checkpoint (the results do not change)."""
_SHORT_PROTOCOL = (
    *_EMA, "--switch_measure_steps", "10", "--subspace_alignment_steps", "25", *_fresh(50, 50),
    "--subspace_extra_eigenvalues", "3", *_RESUMABLE,
)  # fmt: skip
"""The CIFAR-10 runs' protocol: the EMA switch measured every 10 steps, χ_k every 25, certified bases, λ_k+1..k+3,
resumable."""


def _merge(*groups: Sequence[str]) -> tuple[str, ...]:
    """The flag, value pairs of ``groups``, each flag once: where it first appears, with the value it has last (what
    the command line would have meant), so a recorded command names every option once."""
    merged: dict[str, str] = {}
    for group in groups:
        if len(group) % 2 or not all(flag.startswith("--") for flag in group[::2]):
            raise ValueError(f"not flag, value pairs: {group}")
        merged.update(zip(group[::2], group[1::2]))
    return tuple(item for pair in merged.items() for item in pair)


_DIGITS = tuple(QUICKSTART_MLP)
"""The quick start's MLP on digits (:data:`hf_subspace.experiments.settings.QUICKSTART_MLP`)."""

_MNIST_1K = (
    "--train_file", "{data}/mnist/train.npz", "--validation_file", "{data}/mnist/t10k-images-idx3-ubyte.gz",
    "--num_train", "1000", "--num_validation", "2000", "--hessian_batch_size", "1000",
    "--per_device_eval_batch_size", "1000", "--standardize", "none",
)  # fmt: skip
_MNIST_NEEDS = ("mnist/train.npz", "mnist/t10k-images-idx3-ubyte.gz")
_QUICK_SUBSET = (*_QUICK, "--num_train", "200", "--num_validation", "100")
"""Quick mode (tests) on a 200-example training subset."""
_CIFAR_NEEDS = ("cifar10/train.npz", "cifar10/test.npz")
_OPTIMIZER_BRANCHES = (
    *_MNIST_1K, "--modes", "sgd,dominant,bulk", "--max_steps", "2000", "--switch_step", "1000", *_EMA,
    "--subspace_alignment_steps", "100", *_fresh(200, 100), "--logging_steps", "100",
)  # fmt: skip


def _optimizer_differences(max_steps: int, cap: int) -> tuple[str, ...]:
    """How an MNIST-1k optimizer run of ``max_steps`` steps with the EMA switch capped at ``cap`` differs from the
    paper."""
    return (
        "First 1,000 MNIST training images instead of 5,000 (Hessian set, full gradient and loss), pixels scaled to "
        "[0, 1] as in the paper's code; validation on the first 2,000 official test images.",
        f"{max_steps:,} steps (paper: 10,000 or more); the switch by the paper's χ_k EMA rule, capped at step "
        f"{cap:,}; χ_k, its EMA and the effective learning rates measured at every step of the prefix (Table 1), "
        "every 100 steps in the branches.",
        "The basis is certified within 0.05 of the exact top-k eigenspace at every step (`--subspace_basis_tol 0.05`, "
        "paper: a fresh eigsh at every step); exact checks every 100 projected steps are on the card.",
        "Three seeds (0, 1, 2): the tables give seed 0 and the spread; the claims use every seed.",
    )


_RESUMED = (
    "Resumable (checkpoints every 50 steps, `--resume_experiment`): a seed stopped at the end of a session continues "
    "with the same command, reusing its finished prefix and branches (checkpointing does not change the numbers)."
)


def _optimizer_run(
    name: str,
    what: str,
    options: tuple[str, ...],
    extra: tuple[str, ...] = (),
    resumable: bool = False,
    branches: tuple[str, ...] = _OPTIMIZER_BRANCHES,
) -> ReferenceRun:
    """An MLP-on-MNIST-1k optimizer run: ``options`` after the shared ``branches``, ``extra`` after the shared
    differences; ``resumable`` adds :data:`_RESUMABLE` to the options and says so first among the extra differences."""
    pairs = _merge(branches)  # checks that they are flag, value pairs
    flags = dict(zip(pairs[::2], pairs[1::2]))
    differences = _optimizer_differences(int(flags["--max_steps"]), int(flags["--switch_step"]))
    return ReferenceRun(
        name,
        "mlp_mnist",
        (*branches, *options, *(_RESUMABLE if resumable else ()), *_TB_OFF),
        _QUICK_SUBSET,
        f"MLP 784-200-200-10 (tanh, MSE) on MNIST-1k, {what}, batch 50, k = 10: Dom-/Bulk- variants and Table 1",
        (*differences, *((_RESUMED,) if resumable else ()), *extra),
        needs=_MNIST_NEEDS,
        seeds=SEEDS,
    )


# The longer runs' options, one command-line flag and its value together, in the order the cards show them.
_MLP_MNIST_EOS_OPTIONS = (
    *_MNIST_1K, "--prefix", "gd", "--modes", "gd,dominant-gd,bulk-gd", "--learning_rate", "0.1", "--max_steps", "800",
    "--switch_step", "400", "--subspace_alignment_steps", "20", *_fresh(100, 50), "--logging_steps", "20", *_TB_OFF,
)  # fmt: skip

_GPU_CIFAR = (
    "--train_file", "{data}/cifar10/train.npz", "--validation_file", "{data}/cifar10/test.npz", "--num_train", "5000",
    "--num_validation", "1000",
)  # fmt: skip
_VIT_CIFAR10_OPTIONS = (
    *_GPU_CIFAR, "--modes", "sgd,gd", *_EMA, "--switch_measure_steps", "10", "--subspace_alignment_steps", "25",
    "--subspace_basis_tol", "0.05", "--subspace_refresh_steps", "50", "--basis_audit_steps", "50",
    "--subspace_extra_eigenvalues", "3", "--logging_steps", "25", "--learning_rate", "0.1", "--max_steps", "900",
    "--switch_step", "300", "--hessian_num_samples", "500", "--hessian_batch_size", "500",
    "--per_device_eval_batch_size", "500", "--seed", "0", *_TB_OFF,
)  # fmt: skip
"""Run on a lent H200 by ``model_cards/gpu_paper_runs.sh`` (``vit_cifar10`` with ``EXTRA="--modes sgd,gd"``)."""
_VIT_CIFAR10_GD_PREFIX_OPTIONS = (
    *_GPU_CIFAR, "--switch_measure_steps", "10", "--subspace_alignment_steps", "25", "--subspace_basis_tol", "0.05",
    "--subspace_refresh_steps", "50", "--basis_audit_steps", "50", "--subspace_extra_eigenvalues", "3",
    "--logging_steps", "25", "--learning_rate", "0.1", "--prefix", "gd", "--modes", "sgd,gd", "--max_steps", "700",
    "--switch_step", "300", "--switch_rule", "fixed", "--hessian_num_samples", "500", "--hessian_batch_size", "500",
    "--per_device_eval_batch_size", "500", "--seed", "0", *_TB_OFF,
)  # fmt: skip
"""Run on a lent H200 by ``model_cards/gpu_paper_runs.sh`` (``vit_cifar10_gd_prefix``)."""

_TOY_QUADRATIC_OPTIONS = (
    "--modes", "sgd,gd,dominant,bulk", "--max_steps", "500", "--switch_step", "100", *_EMA,
    "--subspace_refresh_steps", "1", *_TB_OFF,
)  # fmt: skip

_MLP_MNIST_5K_OPTIONS = (
    "--train_file", "{data}/mnist/train.npz", "--validation_file", "{data}/mnist/t10k-images-idx3-ubyte.gz",
    "--num_train", "5000", "--standardize", "none", "--hidden_sizes", "200,200", "--activation", "tanh",
    "--learning_rate", "0.01", "--per_device_train_batch_size", "50", "--subspace_k", "10", "--max_steps", "20000",
    "--switch_step", "3000", *_EMA, "--switch_measure_steps", "10", "--subspace_alignment_steps", "100",
    "--save_strategy", "steps", "--save_steps", "2000", "--resume_experiment", "true", *_fresh(1000, 1000),
    "--hessian_batch_size", "1000", "--per_device_eval_batch_size", "1000", "--logging_steps", "100",
    "--modes", "sgd,gd,dominant,bulk", "--seed", "0", *_TB_OFF,
)  # fmt: skip

_CNN_CIFAR10_OPTIONS = (
    "--train_file", "{data}/cifar10/train.npz", "--validation_file", "{data}/cifar10/test.npz",
    "--learning_rate", "0.05", "--modes", "sgd,gd,dominant,bulk", "--max_steps", "450", "--switch_step", "250",
    *_SHORT_PROTOCOL, "--hessian_num_samples", "250", "--hessian_batch_size", "250",
    "--per_device_eval_batch_size", "1000", "--logging_steps", "25", *_TB_OFF,
)  # fmt: skip

_CNN_CIFAR10_GD_PREFIX_OPTIONS = (
    "--train_file", "{data}/cifar10/train.npz", "--validation_file", "{data}/cifar10/test.npz",
    "--learning_rate", "0.05", "--prefix", "gd", "--modes", "sgd,gd", "--max_steps", "450", "--switch_step", "250",
    "--subspace_alignment_steps", "25", *_fresh(50, 50), *_RESUMABLE, "--hessian_num_samples", "250",
    "--hessian_batch_size", "250", "--per_device_eval_batch_size", "1000", "--logging_steps", "25", *_TB_OFF,
)  # fmt: skip

_GPU_SST2 = (
    "--train_file", "{data}/sst2/train.tsv", "--validation_file", "{data}/sst2/dev.tsv", "--num_train", "1000",
    "--learning_rate", "0.01",
)  # fmt: skip
_TRANSFORMER_SST2_OPTIONS = (
    *_GPU_SST2, "--modes", "sgd,gd", "--max_steps", "1500", "--switch_step", "300", *_EMA,
    "--switch_measure_steps", "10", "--subspace_alignment_steps", "25", "--subspace_basis_tol", "0.05",
    "--subspace_refresh_steps", "100", "--basis_audit_steps", "50", "--subspace_extra_eigenvalues", "2",
    "--hessian_batch_size", "250", "--logging_steps", "25", "--seed", "0", *_TB_OFF,
)  # fmt: skip
"""Run on a lent H200 by ``model_cards/gpu_paper_runs.sh`` (``transformer_sst2`` with ``EXTRA="--modes sgd,gd"``)."""
_CNN_CIFAR10_LR001_OPTIONS = _merge(
    _CNN_CIFAR10_OPTIONS, ("--learning_rate", "0.01", "--modes", "sgd,gd", "--max_steps", "600", "--switch_step", "400")
)
"""``cnn_cifar10`` at lr 0.01 for the SGD↔GD claims, which concern GD below the edge of stability: 2/η = 200 lies
above the λ₁ of SGD and GD along the lr 0.05 runs (≤ 106, at initialisation), while at lr 0.05 GD sits at λ₁ ≈ 2/η
= 40."""
_CNN_CIFAR10_LR001_GD_PREFIX_OPTIONS = _merge(_CNN_CIFAR10_GD_PREFIX_OPTIONS, ("--learning_rate", "0.01"))

_TRANSFORMER_SST2_GD_PREFIX_OPTIONS = (
    *_GPU_SST2, "--prefix", "gd", "--modes", "sgd,gd", "--max_steps", "700", "--switch_step", "300",
    "--subspace_alignment_steps", "25", "--subspace_basis_tol", "0.05", "--subspace_refresh_steps", "100",
    "--basis_audit_steps", "50", "--hessian_batch_size", "250", "--logging_steps", "25", "--seed", "0", *_TB_OFF,
)  # fmt: skip
"""Run on a lent H200 by ``model_cards/gpu_paper_runs.sh`` (``transformer_sst2_gd_prefix``)."""

_TOY_QUADRATIC_GD_PREFIX_OPTIONS = (
    "--prefix", "gd", "--modes", "sgd,gd", "--max_steps", "300", "--switch_step", "100",
    "--subspace_refresh_steps", "1", *_TB_OFF,
)  # fmt: skip


_GPU_RUN = (
    "Run on one lent NVIDIA H200 by `model_cards/gpu_paper_runs.sh` (2026-12-04; torch 2.11 with CUDA 13, "
    "transformers 5.17; up to 8 runs side by side on the one GPU, so wall times include that sharing) and adopted "
    "into this card with `hf-subspace cards --adopt`; the command below runs the same options on any machine."
)
_NO_PROJECTED_ON_GPU = (
    "No Dom-/Bulk- branches: with the basis certified within 0.05 at every step they cost ~6–8 s per step on the "
    "H200 (SST-2: 30–40 Hessian-vector products per step over the 1,000-sentence Hessian set at ~5 per second with 8 "
    "runs sharing the GPU; ViT: ~160 products per refresh at ~25 per second, and the gap λ₁₀ − λ₁₁ fell to 0.04–0.1, "
    "where a basis within 0.05 cannot be certified), so one 600–1,200-step projected branch takes 1–2.5 h, past a "
    "15-minute device lease; the Dom-/Bulk- claims for this model stay unanswered."
)


PAPER_EXTRA_RUNS: tuple[ReferenceRun, ...] = (
    ReferenceRun(
        "mlp_mnist_eos",
        "mlp_mnist",
        _MLP_MNIST_EOS_OPTIONS,
        (*_QUICK_SUBSET, "--learning_rate", "0.1"),
        "edge of stability: MLP 784-200-200-10 (tanh, MSE) on MNIST-1k, full-batch GD lr 0.1 (2/η = 20), then GD, "
        "Dom-GD and Bulk-GD, k = 10",
        (
            "The paper's EoS experiments train on larger subsets for longer; here full-batch GD on the first 1,000 "
            "MNIST training images (the whole Hessian set, pixels in [0, 1]), lr 0.1: with pixels in [0, 1] λ₁ stayed "
            "near 0.46 × 2/η at lr 0.05 (a first run of this card), short of the edge.",
            "GD prefix of 400 steps (a fixed switch: the χ_k EMA rule does not apply to GD, whose χ_k is not the "
            "quantity that aligns), then 400 steps of each branch; λ₁, χ_k and the loss measured every 20 steps.",
            "The basis is certified within 0.05 of the exact top-k eigenspace at every step (paper: a fresh eigsh "
            "at every step); exact checks every 50 projected steps are on the card. Three seeds (0, 1, 2).",
        ),
        needs=_MNIST_NEEDS,
        seeds=SEEDS,
    ),
    _optimizer_run(
        "mlp_mnist_sgd",
        "SGD lr 0.01, top-10 and next-10 eigenvalues",
        ("--subspace_extra_eigenvalues", "10"),
        (
            "20 eigenpairs per refresh (`--subspace_extra_eigenvalues 10`) for the spectrum-gap figure; a GD branch "
            "for SGD→GD on real data.",
            "The switch's cap is step 4,000, not 1,000 as in the other optimizer runs, chosen before this run: with "
            "the cap at 1,000 SGD's χ_k was still rising (0.63 over its branch, 0.8 by step 2,000), so SGD→GD could "
            "not be answered. Its first 1,000 prefix steps (Table 1's SGD row) run with the other runs' options.",
        ),
        branches=_merge(
            _OPTIMIZER_BRANCHES, ("--modes", "sgd,gd,dominant,bulk", "--max_steps", "5000", "--switch_step", "4000")
        ),
    ),
    _optimizer_run("mlp_mnist_momentum", "SGD with momentum 0.9, lr 0.01", ("--optim_args", "momentum=0.9")),
    _optimizer_run(
        "mlp_mnist_adam",
        "Adam (adamw_torch, weight decay 0), lr 0.001",
        ("--optim", "adamw_torch", "--learning_rate", "0.001"),
        (
            'Dom-/Bulk-Adam project Adam\'s whole step (`subspace_target="update"`, the default): the moments see the '
            'full gradient. Projecting the gradient before Adam (`subspace_target="gradient"`) and a smaller lr '
            "(card `mlp_mnist_adam_lr1e-4`) are the two variants that could show whether Bulk-Adam's divergence "
            "here depends on either.",
            "Seed 2's Dom-Adam branch was resumed from its step-1,650 checkpoint by a version that did not yet keep a "
            "branch's exact basis checks and seconds across a resume (`branch_progress.json` now does): its checks "
            "cover steps 1,700–1,900 only and its wall time the last 350 steps.",
        ),
        resumable=True,
    ),
    _optimizer_run(
        "mlp_mnist_adam_lr1e-4",
        "Adam (adamw_torch, weight decay 0), lr 0.0001",
        ("--optim", "adamw_torch", "--learning_rate", "0.0001"),
        (
            "Adam at lr 1e-4 besides the `mlp_mnist_adam` card's 1e-3, where Bulk-Adam diverges in every seed: the "
            "same protocol at a tenth of the step size.",
        ),
        resumable=True,
    ),
    _optimizer_run(
        "mlp_mnist_adam_gradient",
        "Adam (adamw_torch, weight decay 0), lr 0.001, the gradient projected before Adam",
        ("--optim", "adamw_torch", "--learning_rate", "0.001", "--subspace_target", "gradient"),
        (
            'Dom-/Bulk-Adam project the minibatch gradient before Adam (`subspace_target="gradient"`): Adam\'s '
            "moments see only the projected gradient. The `mlp_mnist_adam` card projects Adam's whole step instead "
            "(there Bulk-Adam diverges in every seed); the paper's text does not settle which of the two it means.",
        ),
        resumable=True,
    ),
    _optimizer_run("mlp_mnist_sam", "SAM (ρ = 0.05) around SGD, lr 0.01", ("--sam_rho", "0.05"), resumable=True),
    ReferenceRun(
        "vit_cifar10",
        "vit_cifar10",
        _VIT_CIFAR10_OPTIONS,
        (*_QUICK, "--num_train", "100", "--num_validation", "50", "--hessian_num_samples", "64"),
        "a transformers ViT from ViTConfig (patch 8, hidden 64, 2 layers, eager attention, 81k parameters) on the "
        "shipped CIFAR-10 (5,000 train / 1,000 test), cross-entropy, SGD lr 0.1, batch 50, k = 10 (+ 3 eigenvalues)",
        (
            "Not a model of the paper: a small `transformers` ViT (AutoModelForImageClassification.from_config) with "
            "its own cross-entropy loss (the paper's MSE barely trains it at a stable SGD lr).",
            "Data: the shipped 5,000 CIFAR-10 training images (the first 4,000 of data_batch_1 and the first 1,000 of "
            "data_batch_2; the paper takes the first 5,000 of the training set), scaled to [0, 1] and standardised per "
            "channel; validation on the first 1,000 official test images.",
            "The Hessian, full gradient and logged loss use a seeded 500-image subset of the 5,000 (paper: the "
            "whole training set); 900 steps, the switch by the χ_k EMA rule measured every 10 steps, capped at step "
            "300 (the EMA did not reach 0.95: χ_k stayed at 0.66–0.92); 600 steps per branch (paper: ~10,000). "
            "One seed.",
            _GPU_RUN,
            _NO_PROJECTED_ON_GPU,
        ),
        needs=_CIFAR_NEEDS,
    ),
    ReferenceRun(
        "vit_cifar10_gd_prefix",
        "vit_cifar10",
        _VIT_CIFAR10_GD_PREFIX_OPTIONS,
        (*_QUICK, "--num_train", "100", "--num_validation", "50", "--hessian_num_samples", "64"),
        "the `vit_cifar10` ViT with a full-batch GD prefix, then SGD and GD branches (GD→SGD), k = 10",
        (
            "The shared prefix is full-batch GD over the 5,000 images (`--prefix gd`, switch at the fixed step 300), "
            "not SGD: it answers the GD→SGD claim for the `vit_cifar10` setup (same data, model, lr 0.1 and "
            "500-image Hessian set). χ_k measured every 25 steps; 400 steps per branch. One seed.",
            _GPU_RUN,
        ),
        needs=_CIFAR_NEEDS,
    ),
)
"""Runs for the paper's other claims (issue 13): edge of stability, momentum/Adam/SAM with Table 1, the spectrum gap,
and a Hugging Face vision model."""

REFERENCE_RUNS: tuple[ReferenceRun, ...] = (
    ReferenceRun(
        "toy_quadratic",
        "toy_quadratic",
        _TOY_QUADRATIC_OPTIONS,
        _QUICK,
        "2-D ill-conditioned valley, two per-sample losses (k = 1)",
        (
            "500 steps instead of the recipe's 1,000; the switch by the paper's χ_k EMA rule, capped at step 100.",
            "Basis recomputed at every step, as in the paper (the Hessian of a quadratic is constant anyway; d = 2 "
            "leaves no room for the extra eigenpair certified tracking needs). Three seeds (0, 1, 2).",
        ),
        seeds=SEEDS,
    ),
    ReferenceRun(
        "mlp_digits",
        "mlp_mnist",
        _merge(("--modes", "sgd,gd,dominant,bulk"), _DIGITS, ("--max_steps", "1500"), _EMA, _fresh(200, 50), _TB_OFF),
        _QUICK,
        "the quick start's MLP 64-32-32-10 on scikit-learn's 8×8 digits (1,500 train / 297 validation), k = 10",
        (
            "scikit-learn's 8×8 digits instead of MNIST; MLP 64-32-32-10 instead of 784-200-200-10; lr 0.05.",
            "1,500 steps as in the quick start; the switch by the paper's χ_k EMA rule, capped at step 300 (the quick "
            "start's fixed switch).",
            "The basis is certified within 0.05 of the exact top-k eigenspace at every step (paper: a fresh eigsh "
            "at every step); exact checks every 50 projected steps are on the card. Three seeds (0, 1, 2).",
            "A full-batch GD branch besides the quick start's three (for the SGD→GD claim).",
        ),
        seeds=SEEDS,
    ),
    ReferenceRun(
        "mlp_digits_gd_prefix",
        "mlp_mnist",
        _merge(("--prefix", "gd", "--modes", "sgd,gd"), _DIGITS, ("--max_steps", "900"), _fresh(200, 50), _TB_OFF),
        _QUICK,
        "the quick start's MLP on digits with a full-batch GD prefix, then SGD and GD branches (GD→SGD), k = 10",
        (
            "The shared prefix is full-batch GD (`--prefix gd`, 300 steps), not SGD: it answers the GD→SGD claim.",
            "scikit-learn's 8×8 digits instead of MNIST; MLP 64-32-32-10 instead of 784-200-200-10; lr 0.05; 900 "
            "steps; χ_k measured every 30 steps; the basis certified within 0.05 of the exact top-k eigenspace. "
            "Three seeds (0, 1, 2).",
        ),
        seeds=SEEDS,
    ),
    ReferenceRun(
        "mlp_mnist_5k",
        "mlp_mnist",
        _MLP_MNIST_5K_OPTIONS,
        (*_QUICK, "--num_train", "200", "--num_validation", "100", "--basis_audit_steps", "3"),
        "the paper's Figure 1(a): MLP 784-200-200-10 (tanh, MSE ½Σ) on MNIST-5k in [0, 1], SGD lr 0.01, batch 50, "
        "k = 10, 20,000 steps, EMA-triggered switch; SGD, GD, Dom-SGD and Bulk-SGD; 10,000 test images",
        (
            "The paper's data, model, loss, optimizer, batch, k and length (first 5,000 MNIST training images scaled "
            "to [0, 1] = Hessian set, full gradient and loss; 20,000 steps).",
            "The switch by the paper's χ_k EMA rule (decay 0.9, threshold 0.95), capped at step 3,000, but with χ_k "
            "and its EMA measured every 10 prefix steps (paper: every step; on 2 CPU cores every step cost ~1.5 s "
            "in the prefix), so the EMA averages over ~100 steps instead of ~10; every 100 steps in the branches.",
            "The basis is certified within 0.05 of the exact top-k eigenspace at every step (`--subspace_basis_tol "
            "0.05`; paper: a fresh eigsh at every step); exact checks every 1,000 projected steps are on the card.",
            "One seed (the run takes hours on 2 CPU cores); the shorter runs carry the seed spread.",
            "The GD branch (full-batch GD from the switch) ran steps 3,000–4,000 with the library at 2809db6 and was "
            "resumed from its step-4,000 checkpoint at 00e8d95 (its update does not depend on the solver changes "
            "between them); its wall time counts steps 4,000–20,000 only.",
            "Run in the background with the command below (its output folder elsewhere) and adopted into this card "
            "with `hf-subspace cards --adopt`.",
        ),
        needs=("mnist/train.npz", "mnist/t10k-images-idx3-ubyte.gz"),
    ),
    ReferenceRun(
        "cnn_cifar10",
        "cnn_cifar10",
        _CNN_CIFAR10_OPTIONS,
        _QUICK_SUBSET,
        "the paper's CNN (MSE) on the shipped CIFAR-10 5k subset, SGD lr 0.05, batch 50, k = 10 (+ 3 eigenvalues)",
        (
            "Data: the shipped 5,000 CIFAR-10 training images (the first 4,000 of data_batch_1 and the first 1,000 of "
            "data_batch_2; the paper takes the first 5,000 of the training set), scaled to [0, 1] and standardised per "
            "channel; validation on the first 1,000 official test images.",
            "SGD lr 0.05 (paper: 0.001, with which SGD barely moves in a CPU-sized run); 450 steps, the switch by the "
            "χ_k EMA rule measured every 10 steps, capped at step 250: about 200 steps per branch (paper: ~10,000).",
            "Hessian set: a fixed seeded subset of 250 of the 5,000 images (loss, χ_k and the basis are measured on "
            "it; paper: the whole set). The basis is certified within 0.05 of that Hessian's top-10 eigenspace at "
            "every step (along Dom-SGD the CNN's eigenspace moves 0.07–0.14 per step, so this refreshes at nearly "
            "every step); exact checks every 50 projected steps are on the card. λ₁₁…λ₁₃ for the spectrum gap.",
            "One seed (Dom-SGD cost ~69 Hessian-vector products per step on the CPU, Bulk-SGD ~40).",
        ),
        needs=_CIFAR_NEEDS,
    ),
    ReferenceRun(
        "cnn_cifar10_gd_prefix",
        "cnn_cifar10",
        _CNN_CIFAR10_GD_PREFIX_OPTIONS,
        _QUICK_SUBSET,
        "the `cnn_cifar10` CNN with a full-batch GD prefix, then SGD and GD branches (GD→SGD), k = 10",
        (
            "The shared prefix is full-batch GD over the 5,000 images (`--prefix gd`, 250 steps, switch at the fixed "
            "step 250: GD's χ_k is not expected to reach the EMA rule's 0.95), not SGD: it answers the GD→SGD claim "
            "for the `cnn_cifar10` setup (same data, model, lr 0.05 and 250-image Hessian set).",
            "χ_k measured every 25 steps (paper: every step); 200 steps per branch (paper: ~10,000). One seed.",
        ),
        needs=_CIFAR_NEEDS,
    ),
    ReferenceRun(
        "cnn_cifar10_lr0.01",
        "cnn_cifar10",
        _CNN_CIFAR10_LR001_OPTIONS,
        _QUICK_SUBSET,
        "the `cnn_cifar10` CNN at lr 0.01, GD below the edge of stability: SGD and GD branches (SGD→GD), k = 10",
        (
            "lr 0.01 instead of `cnn_cifar10`'s 0.05, chosen before the run: at 0.05 full-batch GD sits at the edge "
            "of stability (λ₁ ≈ 2/η = 40), where GD's gradient stays in the top eigenspace, while the SGD↔GD claims "
            "are about GD below the edge (here 2/η = 200). η·λ₁ is on the card.",
            "600 steps, the switch by the χ_k EMA rule measured every 10 steps, capped at step 400 (lr 0.01 aligns "
            "more slowly than 0.05); about 200 steps per branch (paper: ~10,000). Data, model and the 250-image "
            "Hessian set as `cnn_cifar10`. One seed.",
            "SGD and GD branches only: the run asks the SGD↔GD claims (Dom-/Bulk-SGD on this CNN: `cnn_cifar10`).",
        ),
        needs=_CIFAR_NEEDS,
    ),
    ReferenceRun(
        "cnn_cifar10_lr0.01_gd_prefix",
        "cnn_cifar10",
        _CNN_CIFAR10_LR001_GD_PREFIX_OPTIONS,
        _QUICK_SUBSET,
        "`cnn_cifar10_lr0.01` with a full-batch GD prefix, then SGD and GD branches (GD→SGD), k = 10",
        (
            "The shared prefix is full-batch GD at lr 0.01 over the 5,000 images (`--prefix gd`, 250 steps, switch "
            "at the fixed step 250), below the edge of stability (2/η = 200): it answers GD→SGD in the claim's "
            "regime; `cnn_cifar10_gd_prefix` asks the same at lr 0.05, where GD sits at the edge.",
            "χ_k measured every 25 steps (paper: every step); 200 steps per branch (paper: ~10,000). One seed.",
        ),
        needs=_CIFAR_NEEDS,
    ),
    ReferenceRun(
        "transformer_sst2",
        "transformer_sst2",
        _TRANSFORMER_SST2_OPTIONS,
        (*_QUICK, "--num_train", "100", "--num_validation", "50"),
        "2-layer post-LN Transformer (MSE) on SST-2 from scratch, SGD lr 0.01, batch 50, k = 2 (+ 2 eigenvalues): "
        "SGD and GD branches",
        (
            "First 1,000 SST-2 training sentences and all of them as the Hessian set (as the paper); the 872 dev "
            "sentences for validation. Tokenizer: bert-base-uncased when cached, otherwise a word-level one trained "
            "offline on the sentences (here: the latter). Validation accuracy (0.52–0.58 over the branches) is near "
            "the dev set's majority class (444 of 872, 0.509): at this length the model barely generalises; the "
            "claims are about the training loss and χ_k, not accuracy.",
            "SGD lr 0.01 (paper: 0.001, with which SGD barely moves in a run of this length); SGD's η·λ₁ stays at "
            "0.86–1.5, below the edge of stability, while the GD branch sharpens to it (η·λ₁ up to 2.18 in its last "
            "~250 steps, where its χ_k swings between 0 and ~1); 1,500 steps, the switch by the χ_k EMA rule measured every 10 "
            "steps, capped at step 300 (the EMA did not reach 0.95); 1,200 steps per branch (paper: ~10,000). One "
            "seed.",
            _GPU_RUN,
            _NO_PROJECTED_ON_GPU,
        ),
        needs=("sst2/train.tsv", "sst2/dev.tsv"),
    ),
    ReferenceRun(
        "transformer_sst2_gd_prefix",
        "transformer_sst2",
        _TRANSFORMER_SST2_GD_PREFIX_OPTIONS,
        (*_QUICK, "--num_train", "100", "--num_validation", "50"),
        "the `transformer_sst2` Transformer with a full-batch GD prefix, then SGD and GD branches (GD→SGD), k = 2",
        (
            "The shared prefix is full-batch GD over the 1,000 sentences (`--prefix gd`, switch at the fixed step "
            "300), not SGD: it answers the GD→SGD claim for the `transformer_sst2` setup (same data, model, lr 0.01 "
            "and Hessian set). χ_k measured every 25 steps (paper: every step); 400 steps per branch. One seed.",
            _GPU_RUN,
        ),
        needs=("sst2/train.tsv", "sst2/dev.tsv"),
    ),
    ReferenceRun(
        GD_PREFIX_RUN,
        "toy_quadratic",
        _TOY_QUADRATIC_GD_PREFIX_OPTIONS,
        _QUICK,
        "the toy valley with a full-batch GD prefix, then SGD and GD branches: the GD→SGD claim, k = 1",
        (
            "The shared prefix is full-batch GD (`--prefix gd`), not SGD: it answers the GD→SGD claim; the other "
            "claims are about branches after an SGD prefix (the `toy_quadratic` run).",
            "The 2-D toy valley instead of the paper's networks; 300 steps, switch at step 100; χ_k measured every "
            "25 steps (the recipe's default), so at the switch itself. Three seeds (0, 1, 2).",
        ),
        seeds=SEEDS,
    ),
    *PAPER_EXTRA_RUNS,
)

UNAVAILABLE: dict[str, str] = {}
"""Reference runs without a card yet, and why (listed in the index)."""


def gd_prefix_run(name: str) -> str | None:
    """The reference run with a GD prefix that answers GD→SGD for run ``name``: its ``_gd_prefix`` twin, else a
    GD-prefix run of the same recipe (``mlp_mnist`` → ``mlp_digits_gd_prefix``), else ``None`` (never another
    model's run: the toy valley does not answer for an MLP)."""
    twin = f"{name}_gd_prefix"
    if any(run.name == twin for run in REFERENCE_RUNS):
        return twin
    recipe = next((run.recipe for run in REFERENCE_RUNS if run.name == name), None)
    same = [
        r.name
        for r in REFERENCE_RUNS
        if r.recipe == recipe
        and r.name != name
        and any(a == "--prefix" and b == "gd" for a, b in zip(r.options, r.options[1:]))
    ]
    return same[0] if same else None


def amplification_baseline(name: str) -> str | None:
    """The plain-SGD run on the same data and model that run ``name``'s amplification claim (Table 1) is compared
    with: ``mlp_mnist_sgd`` for the other MNIST-1k optimizer runs, else ``None``."""
    same_setup = {r.name for r in REFERENCE_RUNS if r.options[: len(_OPTIMIZER_BRANCHES)] == _OPTIMIZER_BRANCHES}
    return "mlp_mnist_sgd" if name in same_setup and name != "mlp_mnist_sgd" else None


REPOSITORY = CardsRepository(REFERENCE_RUNS, CARDS_DIR, SHARED_DATA, UNAVAILABLE, gd_prefix_run, amplification_baseline)
"""This repository's runs, cards folder and data, for :func:`~hf_subspace.experiments.cards_cli.cards_main`."""


default_data_root = REPOSITORY.data_root
"""``$HF_SUBSPACE_DATA``, else ``../shared/data`` beside the repository root."""
regenerate = REPOSITORY.regenerate
"""Run ``runs`` (default :data:`REFERENCE_RUNS`) into the cards folder (:meth:`CardsRepository.regenerate`)."""


def main(argv: Sequence[str] | None = None) -> int:
    """``hf-subspace cards``: :func:`~hf_subspace.experiments.cards_cli.cards_main` over this repository."""
    return cards_main(REPOSITORY, argv)


if __name__ == "__main__":
    raise SystemExit(main())
