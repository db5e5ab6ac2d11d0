"""SubspaceTrainingArguments.subspace_graph_cache_bytes: reaches the trainer's Hessian operator, leaves training
unchanged, and bad values are refused before training."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from _trainer_fixtures import DigitsMLP, base_args, digits_dataset, losses

import hf_subspace.distributed
from hf_subspace import SubspaceTrainer, SubspaceTrainingArguments

RUN = {"subspace_mode": "dominant", "subspace_k": 3, "max_steps": 2, "subspace_alignment_steps": 0}
"""A refresh at every step (two Hessian batches of 100 digits), no alignment passes."""


class Float64MLP(DigitsMLP):
    """The digits MLP in float64 (the dataset's float32 inputs are upcast)."""

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        return super().forward(x.double(), labels)


@pytest.fixture(scope="module")
def dataset():
    return digits_dataset(300)


def _trainer(tmp_path, dataset, **overrides: Any) -> SubspaceTrainer:
    torch.manual_seed(0)
    args = SubspaceTrainingArguments(**base_args(str(tmp_path), **{**RUN, **overrides}))
    return SubspaceTrainer(model=Float64MLP().double(), args=args, train_dataset=dataset)


def test_budget_reaches_the_refreshes_and_training_is_unchanged(tmp_path, dataset) -> None:
    runs: dict[int | None, tuple[int, dict[int, float], list[torch.Tensor]]] = {}

    def train(budget: int | None) -> SubspaceTrainer:
        trainer = _trainer(tmp_path, dataset, subspace_graph_cache_bytes=budget)
        trainer.train()
        assert trainer.hessian_operator._graphs.budget == budget
        params = [p.detach().clone() for p in trainer.model.parameters()]
        runs[budget] = (trainer.hessian_operator.num_graphs_built, losses(trainer.state.log_history), params)
        return trainer

    probe = train(None).hessian_operator  # the default budget
    assert len(probe.batches) == 2
    with probe.reusing_graphs():
        probe.matvec(torch.ones(probe.dim, dtype=torch.float64))
        both = probe._graphs.used  # the two batches' graphs (same shapes, so about half each)
    assert both > 0
    train(0)
    train(3 * both // 4)  # room for one of the two graphs
    (default, *_), (off, off_losses, off_params), (one, *_) = runs.values()
    # Each refresh's solve: 0 rebuilds both graphs per product pass (2P), the default builds each once per solve (2S),
    # room for one keeps the first and rebuilds the second per pass (P + S).
    assert default < one < off and 2 * one == off + default, (off, default, one)
    for _, run_losses, params in runs.values():
        assert run_losses == off_losses and len(off_losses) == 2  # identical, not just close
        assert all(torch.equal(a, b) for a, b in zip(params, off_params))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"subspace_graph_cache_bytes": -1}, r"subspace_graph_cache_bytes=-1 must be >= 0"),
        ({"subspace_graph_cache_bytes": 1000, "fsdp": True}, r"FSDP2 .*subspace_graph_cache_bytes > 0"),
    ],
)
def test_bad_budgets_fail_before_training(tmp_path, overrides, match) -> None:
    with pytest.raises(ValueError, match=match):
        SubspaceTrainingArguments(**base_args(str(tmp_path), **overrides))


def test_off_and_default_are_accepted_with_split_vectors_and_fsdp(tmp_path) -> None:
    for overrides in ({"subspace_shard_vectors": True}, {"fsdp": True}):
        for budget in (0, None):
            SubspaceTrainingArguments(**base_args(str(tmp_path), subspace_graph_cache_bytes=budget, **overrides))


@pytest.mark.parametrize("shard", [None, True])
def test_budget_with_the_default_split_vectors_of_several_processes_is_refused(
    tmp_path, dataset, monkeypatch, shard
) -> None:
    # Two processes split the solver's vectors (by default, or asked); the trainer refuses the budget before
    # building anything.
    monkeypatch.setattr(hf_subspace.distributed, "world_size", lambda: 2)
    with pytest.raises(ValueError, match=r"subspace_graph_cache_bytes=1000: .* with 2 processes .* split"):
        _trainer(tmp_path, dataset, subspace_graph_cache_bytes=1000, subspace_shard_vectors=shard)


def test_budget_with_split_vectors_asked_in_one_process_keeps_graphs(tmp_path, dataset) -> None:
    # One process has nothing to split: subspace_shard_vectors=True leaves whole vectors, so the budget applies.
    trainer = _trainer(tmp_path, dataset, subspace_graph_cache_bytes=10**9, subspace_shard_vectors=True)
    assert not trainer.subspace_shard_vectors and trainer.hessian_operator._graphs.budget == 10**9
