"""SubspaceTrainer's callback on edge cases: NaN, parameters without gradient, changed settings on resume, the
eigengap, and a switch step beyond the end of training. Each checks the value against an independent reference."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _torchrun import torchrun_two
from _trainer_fixtures import DigitsMLP, base_args, digits_dataset, losses
from datasets import Dataset
from safetensors.torch import load_file
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_subspace import SubspaceTrainer, SubspaceTrainingArguments

WORKERS = Path(__file__).resolve().parent / "distributed"
CALLBACK_LOGGER = "hf_subspace.callback"


@pytest.fixture(scope="module")
def dataset():
    return digits_dataset(500)


def _trainer(tmp_path: Path, dataset, model: torch.nn.Module | None = None, **overrides: Any) -> SubspaceTrainer:
    torch.manual_seed(0)
    args = SubspaceTrainingArguments(**base_args(str(tmp_path), **overrides))
    return SubspaceTrainer(model=model or DigitsMLP(), args=args, train_dataset=dataset)


def _plain_args(output_dir: Path) -> TrainingArguments:
    drop = ("subspace_k", "hessian_num_samples", "hessian_batch_size")
    return TrainingArguments(**{k: v for k, v in base_args(str(output_dir)).items() if k not in drop})


def _all_logged_numbers_finite(history: list[dict[str, Any]]) -> bool:
    return all(math.isfinite(v) for h in history for v in h.values() if isinstance(v, (int, float)))


# -- NaN ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "alignment"), [("bulk", 1), ("none", 0)])
def test_nan_in_a_training_batch_stops_before_a_nan_checkpoint(tmp_path, dataset, mode, alignment):
    # Reference for which step draws the bad example: a plain Trainer's own data order, read from a copy of the
    # data whose first feature holds the example's index.
    x = np.array(dataset["x"], dtype=np.float32)
    labels = np.array(dataset["labels"])
    tagged = x.copy()
    tagged[:, 0] = np.arange(len(x))
    probe = Trainer(
        model=DigitsMLP(),
        args=_plain_args(tmp_path / "probe"),
        train_dataset=Dataset.from_dict({"x": tagged, "labels": labels}),
    )
    order = [int(i) for batch in probe.get_train_dataloader() for i in batch["x"][:, 0].tolist()]
    bad_step = 3
    bad = order[bad_step * 50 + 7]
    x[bad, 5] = np.nan
    poisoned = Dataset.from_dict({"x": x, "labels": labels})
    torch.manual_seed(0)
    args = SubspaceTrainingArguments(
        **base_args(
            str(tmp_path / "run"),
            subspace_mode=mode,
            subspace_start_step=1,
            subspace_alignment_steps=alignment,
            save_strategy="steps",
            save_steps=1,
            max_steps=6,
        )
    )
    # The Hessian set is clean, so only the training batch carries the NaN.
    trainer = SubspaceTrainer(model=DigitsMLP(), args=args, train_dataset=poisoned, hessian_dataset=dataset)
    with pytest.raises(FloatingPointError, match=f"at step {bad_step} is not finite") as err:
        trainer.train()
    assert "NaN" in str(err.value)
    folders = sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*"))
    assert folders == [f"checkpoint-{s}" for s in range(1, bad_step + 1)]
    for name in folders:  # every checkpoint written holds finite weights, the last one included
        weights = load_file(tmp_path / "run" / name / "model.safetensors")
        assert all(bool(torch.isfinite(t).all()) for t in weights.values()), name
    history = trainer.state.log_history
    assert _all_logged_numbers_finite(history)
    assert max(h["step"] for h in history) <= bad_step
    assert all(h.get("subspace/chi_k_minibatch_grad", 0.0) < 1.0 for h in history)


def test_nan_in_the_hessian_set_names_the_step(tmp_path, dataset):
    x = np.array(dataset["x"], dtype=np.float32)
    x[3, 0] = np.nan
    bad = Dataset.from_dict({"x": x[:200], "labels": np.array(dataset["labels"])[:200]})
    torch.manual_seed(0)
    args = SubspaceTrainingArguments(**base_args(str(tmp_path), subspace_mode="bulk", subspace_start_step=2))
    trainer = SubspaceTrainer(model=DigitsMLP(), args=args, train_dataset=dataset, hessian_dataset=bad)
    with pytest.raises(FloatingPointError, match="at step 0"):
        trainer.train()
    assert _all_logged_numbers_finite(trainer.state.log_history)


# -- parameters without a gradient ----------------------------------------------------------------------------
class GradientRecorder(TrainerCallback):
    """Placed before the subspace callback: each step's raw minibatch gradient (None kept) and the basis it met."""

    def __init__(self, trainer: SubspaceTrainer) -> None:
        self.trainer = trainer
        self.steps: list[tuple[list[torch.Tensor | None], Any]] = []
        callbacks = trainer.callback_handler.callbacks
        callbacks.insert(callbacks.index(trainer.subspace_callback), self)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.grads = [None if p.grad is None else p.grad.detach().clone() for p in self.trainer.subspace_params]

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.steps.append((self.grads, self.trainer.subspace_state.basis))  # the basis of this step's refresh


@pytest.mark.parametrize("target", ["update", "gradient"])
@pytest.mark.parametrize("mode", ["dominant", "bulk"])
def test_parameter_without_gradient_is_measured_as_zero_and_stays_fixed(tmp_path, dataset, mode, target):
    torch.manual_seed(0)
    model = DigitsMLP(unused=True)
    initial = model.unused.detach().clone()
    trainer = _trainer(
        tmp_path,
        dataset,
        model=model,
        subspace_mode=mode,
        subspace_target=target,
        subspace_start_step=1,
        subspace_alignment_steps=1,
        max_steps=5,
        optim_args="momentum=0.9",
    )
    recorder = GradientRecorder(trainer)
    trainer.train()
    assert torch.equal(model.unused.detach(), initial)  # exactly, not up to rounding of V's rows
    logged = [h["subspace/chi_k_minibatch_grad"] for h in trainer.state.log_history if "subspace/chi_k_update" in h]
    assert len(logged) == 5
    # Reference: χ_k of the flat gradient with zeros for the unused parameter, from the basis' matrix.
    expected = []
    slot = trainer.subspace_param_names.index("unused")
    for grads, basis in recorder.steps:
        assert grads[slot] is None
        flat = torch.cat(
            [
                (g if g is not None else torch.zeros_like(p)).reshape(-1).double()
                for g, p in zip(grads, trainer.subspace_params)
            ]
        )
        v = basis.vectors.double()
        expected.append(float(torch.linalg.norm(v.T @ flat) / torch.linalg.norm(flat)))
    assert logged == pytest.approx(expected, rel=1e-5)
    assert all(0.0 < chi < 1.0 for chi in logged)


def _torchrun(worker: str, *argv: str) -> None:
    torchrun_two([str(WORKERS / worker), *argv], {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})


@pytest.mark.distributed
def test_parameter_without_gradient_on_two_processes_matches_one(tmp_path):
    sys.path.insert(0, str(WORKERS))
    from worker_trainer import run

    _torchrun("worker_trainer.py", str(tmp_path / "ddp"), "unused")
    r0, r1 = (json.loads((tmp_path / "ddp" / f"rank{r}_unused.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2 and r0["unused_fixed"] and r1["unused_fixed"]
    single = run(str(tmp_path / "single"), 50, unused=True)
    history = single.state.log_history
    chi = [h["subspace/chi_k_minibatch_grad"] for h in history if "subspace/chi_k_minibatch_grad" in h]
    assert len(chi) == len(r0["minibatch_chi"]) == 4
    assert r0["minibatch_chi"] == pytest.approx(chi, rel=1e-4)
    assert r0["minibatch_chi"] == r1["minibatch_chi"]


# -- resume with changed settings ------------------------------------------------------------------------------
RESUME = {
    "subspace_mode": "bulk",
    "subspace_start_step": 2,
    "subspace_refresh_steps": 4,
    "subspace_alignment_steps": 0,
    "max_steps": 8,
    "save_strategy": "steps",
    "save_steps": 4,
}


class BasisRecorder(TrainerCallback):
    """After the subspace callback: per step, the basis used and χ_k / bulk fraction of the applied update."""

    def __init__(self, trainer: SubspaceTrainer) -> None:
        self.trainer = trainer
        self.records: dict[int, tuple[int, int, float, float]] = {}

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.before = [p.detach().clone() for p in self.trainer.subspace_params]
        self.basis = self.trainer.subspace_state.basis

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        delta = [p.detach() - b for p, b in zip(self.trainer.subspace_params, self.before)]
        b = self.basis
        self.records[state.global_step] = (b.dim, b.k, b.dominant_fraction(delta), b.bulk_fraction(delta))


@pytest.mark.parametrize(
    ("changed", "expect_k", "expect_dim", "message"),
    [
        ({"subspace_k": 3}, 3, 1210, "k 5 → 3"),
        ({"subspace_k": 8}, 8, 1210, "k 5 → 8"),
        ({"subspace_parameter_filter": "^fc2"}, 5, 170, "parameter_filter None → '^fc2'"),
    ],
)
def test_resume_with_changed_subspace_settings_refreshes_with_the_new_ones(
    tmp_path, dataset, caplog, changed, expect_k, expect_dim, message
):
    first = _trainer(tmp_path, dataset, **RESUME)
    first.train()
    checkpoint = tmp_path / "checkpoint-4"
    resumed = _trainer(tmp_path / "resumed", dataset, **{**RESUME, **changed})
    recorder = BasisRecorder(resumed)
    resumed.add_callback(recorder)
    with caplog.at_level(logging.WARNING, logger=CALLBACK_LOGGER):
        resumed.train(resume_from_checkpoint=str(checkpoint))
    assert any(message in r.getMessage() and "recomputed" in r.getMessage() for r in caplog.records), caplog.text
    assert sorted(recorder.records) == [4, 5, 6, 7]
    for step, (dim, k, chi, bulk) in recorder.records.items():
        assert (dim, k) == (expect_dim, expect_k), step
        assert chi <= 1e-5 and bulk > 0.99, step  # projected out of the new subspace
    # Refreshed at the resumed step with the new settings, then on the unchanged schedule (every 4 steps).
    assert resumed.subspace_state.last_refresh_step == 4 and resumed.subspace_state.switch_step == 2
    assert len(losses(resumed.state.log_history)) == 8


def test_resume_with_unchanged_settings_keeps_the_saved_basis(tmp_path, dataset, caplog):
    first = _trainer(tmp_path, dataset, **RESUME)
    first.train()
    saved = torch.load(tmp_path / "checkpoint-4" / "subspace_state.pt", weights_only=False)
    resumed = _trainer(tmp_path / "resumed", dataset, **{**RESUME, "max_steps": 5})
    with caplog.at_level(logging.WARNING, logger=CALLBACK_LOGGER):
        resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
    assert "changed subspace settings" not in caplog.text
    assert resumed.subspace_state.last_refresh_step == saved["last_refresh_step"] == 2  # no refresh at 4
    assert torch.equal(resumed.subspace_state.basis.vectors, saved["basis"]["vectors"])


# -- eigengap ---------------------------------------------------------------------------------------------------
def _dense_spectrum(model: DigitsMLP, dataset, indices: np.ndarray) -> torch.Tensor:
    """Eigenvalues (descending) of the dense float64 Hessian of the mean loss over the Hessian subset.

    The MLP's loss is written out by hand (½‖tanh(xW₁ᵀ + b₁)W₂ᵀ + b₂ − onehot(y)‖² averaged over examples).
    """
    from torch.autograd.functional import hessian

    x = torch.tensor(np.array(dataset["x"])[indices], dtype=torch.float64)
    target = torch.nn.functional.one_hot(torch.tensor(np.array(dataset["labels"])[indices]), 10).double()
    tensors = [t.detach().double() for t in (model.fc1.weight, model.fc1.bias, model.fc2.weight, model.fc2.bias)]
    sizes, shapes = [t.numel() for t in tensors], [t.shape for t in tensors]

    def loss(flat: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2 = (t.reshape(s) for t, s in zip(flat.split(sizes), shapes))
        out = torch.tanh(x @ w1.T + b1) @ w2.T + b2
        return 0.5 * ((out - target) ** 2).sum(-1).mean()

    h = hessian(loss, torch.cat([t.reshape(-1) for t in tensors]))
    return torch.linalg.eigvalsh(h).flip(0)


@pytest.mark.parametrize("extra", [0, 2])
def test_logged_eigengap_matches_the_dense_hessian(tmp_path, dataset, extra):
    from hf_subspace.trainer import hessian_subset_indices

    trainer = _trainer(
        tmp_path,
        dataset,
        subspace_extra_eigenvalues=extra,
        subspace_solver_tol=1e-5,
        subspace_alignment_steps=1,
        max_steps=1,
    )
    torch.manual_seed(0)
    reference_model = DigitsMLP()  # the same initial weights as the trainer's model
    values = _dense_spectrum(reference_model, dataset, hessian_subset_indices(500, trainer.args))
    trainer.train()
    first = next(h for h in trainer.state.log_history if "subspace/eigenvalue_top_01" in h)
    assert first["step"] == 0
    assert first["subspace/eigenvalue_top_05"] == pytest.approx(float(values[4]), rel=1e-4)
    gap = float(values[4] - values[5])
    if extra:
        assert first["subspace/eigengap"] == pytest.approx(gap, rel=1e-3)
    elif "subspace/eigengap" in first:  # the solver's own estimate: a Ritz value never exceeds λ_{k+1}
        assert first["subspace/eigengap"] >= gap - 1e-3 * float(values[0])


# -- a switch step that training never reaches -------------------------------------------------------------------
def test_start_step_beyond_max_steps_warns_and_spends_no_hessian_products(tmp_path, dataset, caplog):
    trainer = _trainer(tmp_path, dataset, subspace_mode="bulk", subspace_start_step=100, max_steps=4)
    with caplog.at_level(logging.WARNING, logger=CALLBACK_LOGGER):
        trainer.train()
    assert "subspace_start_step=100 is not below max_steps=4" in caplog.text and "never" in caplog.text
    assert trainer.hessian_operator.num_passes == 0 and trainer.subspace_state.basis is None
    assert not any(k.startswith("subspace/") for h in trainer.state.log_history for k in h)
    # Measurements the user asked for explicitly still happen (and only those: steps 0, 2 and the end).
    asked = _trainer(
        tmp_path / "asked",
        dataset,
        subspace_mode="bulk",
        subspace_start_step=100,
        max_steps=4,
        subspace_alignment_steps=2,
    )
    asked.train()
    measured = [h["step"] for h in asked.state.log_history if "subspace/full_train_loss" in h]
    assert measured == [0, 2, 4] and asked.subspace_state.switch_step is None
