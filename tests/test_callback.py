"""SubspaceCallback: one schedule per run, clean logs, and a summary of the model the trainer ends with."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from _trainer_fixtures import DigitsMLP, base_args, digits_dataset
from transformers import EarlyStoppingCallback, TrainerCallback

from hf_subspace import SubspaceTrainer, SubspaceTrainingArguments
from hf_subspace._notices import ProgressOperator
from hf_subspace.metrics import METRIC_DESCRIPTIONS

PREFIX = "subspace/"


@pytest.fixture(scope="module")
def dataset():
    return digits_dataset(500)


def _trainer(
    out: Path, dataset: Any, *, callbacks: list[Any] | None = None, eval_dataset: Any = None, **overrides: Any
) -> SubspaceTrainer:
    torch.manual_seed(0)
    args = SubspaceTrainingArguments(**base_args(str(out), **overrides))
    return SubspaceTrainer(
        model=DigitsMLP(), args=args, train_dataset=dataset, eval_dataset=eval_dataset, callbacks=callbacks
    )


def _steps_with(history: list[dict[str, Any]], name: str) -> list[int]:
    return [h["step"] for h in history if PREFIX + name in h]


def _subspace_records(history: list[dict[str, Any]], after: int) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for h in history:
        if h["step"] > after:
            out.setdefault(h["step"], {}).update({k: v for k, v in h.items() if k.startswith(PREFIX)})
    return out


# -- a second train() -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tracked", [False, True])
def test_a_second_train_call_refreshes_and_probes_again(tmp_path, dataset, tracked: bool) -> None:
    """The step counter restarts with each train(): so does the refresh schedule (before, the second call reused
    the first call's last refresh step and never refreshed)."""
    settings: dict[str, Any] = {"subspace_mode": "bulk", "subspace_start_step": 0, "subspace_refresh_steps": 3}
    settings["subspace_alignment_steps"] = 0
    if tracked:
        settings["subspace_basis_tol"] = 0.05
    trainer = _trainer(tmp_path, dataset, **settings)
    trainer.train()
    first = _steps_with(trainer.state.log_history, "solver_hvps")
    trainer.train()
    second = _steps_with(trainer.state.log_history, "solver_hvps")
    assert second and second[0] == 1  # the refresh at step 0 is logged with step 1's record
    if not tracked:
        assert first == second == [1, 4, 7]
    tracker = trainer.subspace_state.tracker
    assert not tracked or (tracker is not None and tracker.num_refreshes == len(second))


# -- interrupted and resumed on the same object -----------------------------------------------------------------
class _Interrupt(TrainerCallback):
    def __init__(self, at: int) -> None:
        self.at = at

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.global_step == self.at:
            raise KeyboardInterrupt


def test_resume_on_the_same_trainer_logs_nothing_of_the_abandoned_steps(tmp_path, dataset) -> None:
    """Interrupted at step 6 (a refresh and two window values queued), resumed from checkpoint-4 on the same object:
    the log after the resume equals that of a fresh trainer resumed from the same checkpoint."""
    settings = {
        "subspace_mode": "bulk",
        "subspace_start_step": 0,
        "subspace_refresh_steps": 3,
        "subspace_alignment_steps": 0,
        "logging_steps": 4,
        "save_strategy": "steps",
        "save_steps": 4,
        "max_steps": 12,
    }
    stop = _Interrupt(6)
    trainer = _trainer(tmp_path / "a", dataset, callbacks=[stop], **settings)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    trainer.remove_callback(stop)
    checkpoint = str(tmp_path / "a" / "checkpoint-4")
    trainer.train(resume_from_checkpoint=checkpoint)
    fresh = _trainer(tmp_path / "b", dataset, **settings)
    fresh.train(resume_from_checkpoint=checkpoint)
    got, expected = (_subspace_records(t.state.log_history, 4) for t in (trainer, fresh))
    assert sorted(got) == sorted(expected) == [8, 12]
    for step, record in expected.items():
        assert sorted(got[step]) == sorted(record), step
        for name, value in record.items():
            if name == PREFIX + "solver_seconds":
                continue  # wall-clock time
            assert got[step][name] == pytest.approx(value, rel=1e-6, abs=1e-9), (step, name)


# -- logging_steps as a ratio -----------------------------------------------------------------------------------
def test_logging_steps_ratio_sets_the_measurement_interval(tmp_path, dataset) -> None:
    """logging_steps=0.25 of 8 steps is every 2 steps (the Trainer's own reading), not every step."""
    trainer = _trainer(tmp_path, dataset, subspace_mode="none", logging_steps=0.25)
    trainer.train()
    assert _steps_with(trainer.state.log_history, "full_train_loss") == [0, 2, 4, 6, 8]


# -- the end of a run -------------------------------------------------------------------------------------------
class _StopAt(TrainerCallback):
    def __init__(self, at: int) -> None:
        self.at = at

    def on_evaluate(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.global_step == self.at:
            control.should_training_stop = True


def _full_loss(trainer: SubspaceTrainer) -> float:
    loss, _ = trainer.hessian_operator.loss_and_gradient()
    return loss


def test_a_run_stopped_at_an_evaluation_is_measured_at_its_last_step(tmp_path, dataset) -> None:
    trainer = _trainer(
        tmp_path,
        dataset,
        callbacks=[_StopAt(3)],
        subspace_mode="bulk",
        subspace_start_step=0,
        subspace_alignment_steps=2,
        eval_strategy="steps",
        eval_steps=1,
        eval_dataset=digits_dataset(100),
    )
    trainer.train()
    assert trainer.state.global_step == 3
    last = trainer.subspace_summary()["last"]
    assert last["step"] == 3
    assert last["full_train_loss"] == pytest.approx(_full_loss(trainer), rel=1e-6)


def test_load_best_model_at_end_summarises_the_model_it_loads(tmp_path, dataset) -> None:
    """Early stopping with load_best_model_at_end: the card's "at the end" describes the loaded checkpoint."""
    trainer = _trainer(
        tmp_path,
        dataset,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=2)],
        subspace_mode="bulk",
        subspace_start_step=0,
        subspace_alignment_steps=2,
        eval_strategy="steps",
        eval_steps=1,
        save_strategy="steps",
        save_steps=1,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=True,  # the loss falls: the first evaluation stays the "best", training stops at step 3
        eval_dataset=digits_dataset(100),
    )
    trainer.train()
    assert trainer.state.best_global_step == 1 and trainer.state.global_step == 3
    last = trainer.subspace_summary()["last"]
    assert last["step"] == 1
    assert last["full_train_loss"] == pytest.approx(_full_loss(trainer), rel=1e-6)


# -- TensorBoard ------------------------------------------------------------------------------------------------
def test_tensorboard_has_one_value_per_tag_and_step_and_defines_every_metric(tmp_path, dataset) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = _trainer(
        tmp_path,
        dataset,
        report_to="tensorboard",
        subspace_mode="dominant",
        subspace_start_step=3,
        subspace_alignment_steps=2,
        subspace_basis_tol=0.2,
        logging_steps=2,
        max_steps=10,
    )
    trainer.train()
    (folder,) = {p.parent for p in tmp_path.rglob("events.out.tfevents.*")}
    acc = EventAccumulator(str(folder))
    acc.Reload()
    tags = [t for t in acc.Tags()["scalars"] if t.startswith("train/" + PREFIX)]
    assert "train/subspace/chi_k_update" in tags and "train/subspace/switch_step" in tags
    for tag in tags:
        steps = [e.step for e in acc.Scalars(tag)]
        assert len(steps) == len(set(steps)), (tag, steps)
        name = re.sub(r"_\d+$", "_NN", tag.removeprefix("train/" + PREFIX))
        defined = f"`{name}`" in METRIC_DESCRIPTIONS or (
            name.startswith("solver_") and "`solver_*`" in METRIC_DESCRIPTIONS
        )
        assert defined or name == "chi_k_full_grad_ema", f"{name} is not defined in the metric definitions"
    settings = acc.Tensors("subspace/settings/text_summary")
    shown = [json.loads(e.tensor_proto.string_val[0].decode())["switch_step"] for e in settings]
    assert shown[-1] == 3 and settings[-1].step == 3


# -- long refreshes ---------------------------------------------------------------------------------------------
def test_a_long_refresh_shows_progress_and_says_what_it_costs(tmp_path, dataset, monkeypatch, caplog) -> None:
    """A refresh past the delay gets its own bar (products done / expected); the first one names its cost and the
    options that trade it. The delay is set to 0 here so the test needs no slow refresh."""
    import hf_subspace._notices as notices

    bars: list[Any] = []
    original = ProgressOperator.__init__

    def record(self: ProgressOperator, operator: Any, expected: int | None, desc: str, delay: float = 0.0) -> None:
        original(self, operator, expected, desc, delay=0.0)
        bars.append(self)

    monkeypatch.setattr(ProgressOperator, "__init__", record)
    monkeypatch.setattr(notices, "BAR_DELAY_S", 0.0)
    trainer = _trainer(tmp_path, dataset, subspace_mode="bulk", subspace_start_step=0, subspace_refresh_steps=4)
    with caplog.at_level(logging.WARNING, logger="hf_subspace.callback"):
        trainer.train()
    assert len(bars) >= 2 and all(bar.bar is not None for bar in bars)
    assert bars[0].bar.total is None and bars[1].bar.total == bars[0].bar.n > 0  # the last refresh's count
    notes = [r.getMessage() for r in caplog.records if "first basis refresh" in r.getMessage()]
    assert len(notes) == 1 and "hessian_num_samples (now 200)" in notes[0] and "hessian_batch_size" in notes[0]


# -- checkpoints ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tracked", [False, True])
def test_a_version_2_checkpoint_state_still_loads(tmp_path, dataset, tracked: bool) -> None:
    """Version 2 kept the tracker's state under "tracker" (None without tracking) beside "last_refresh_step"."""
    settings: dict[str, Any] = {"subspace_mode": "bulk", "subspace_start_step": 0, "subspace_alignment_steps": 0}
    if tracked:
        settings["subspace_basis_tol"] = 0.05
    trainer = _trainer(tmp_path / "a", dataset, **settings)
    trainer.train()
    saved = trainer.subspace_state.state_dict()
    schedule = saved.pop("schedule")
    old = {**saved, "version": 2, "tracker": schedule if tracked else None}
    other = _trainer(tmp_path / "b", dataset, **settings)
    other.subspace_callback.load_state_dict(old)
    st = other.subspace_state
    assert st.last_refresh_step == saved["last_refresh_step"] is not None
    got, expected = st.schedule.state_dict(), trainer.subspace_state.schedule.state_dict()
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        same = torch.equal(got[key], value) if isinstance(value, torch.Tensor) else got[key] == value
        assert same, key
    assert torch.equal(st.basis.vectors, trainer.subspace_state.basis.vectors)
