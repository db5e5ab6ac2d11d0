"""SubspaceTrainer's schedule on an FSDP2 model: the callback's hooks (basis refresh, χ_k, projected gradients and
updates, effective learning rates, checkpoints of the basis) driven with a fake trainer state over a ``fully_shard``
model in two real gloo processes, against the same driver on the unsharded model in one process.

accelerate switches FSDP on for GPUs only (on CPU it trains with DDP), so the Trainer itself is not in the loop here:
``benchmarks/gpu_fsdp2.sh`` runs it on a GPU.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from _reference import subspace_distance
from _torchrun import torchrun_two

from hf_subspace._shards import RowShard
from hf_subspace.trainer import load_subspace_state, save_subspace_state

WORKERS = Path(__file__).resolve().parent / "distributed"
pytestmark = pytest.mark.distributed

#: Logged metrics compared with the reference (the solver's own counters and timings are not).
COMPARED = ("full_train_loss", "chi_k_", "eigenvalue_", "effective_lr_", "basis_overlap", "switch_step")
#: (float64 runs with refreshes by finite differences, the float32 run resumed from the reference's basis).
TOL = {"dominant_update": 1e-6, "bulk_gradient": 1e-6, "resumed_float32": 1e-5}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("fsdp_trainer")
    sys.path.insert(0, str(WORKERS))
    import worker_fsdp_trainer as w

    run = "resumed_float32"  # its first steps, with the refresh, in one process; checkpoint saved whole
    first = w.drive(run, w.arguments(str(out / "ref_first"), run), steps=w.RESUME_AT)
    (out / "reference").mkdir()
    save_subspace_state(str(out / "reference"), first["callback"].state.state_dict(), None)
    weights = {k: v.detach().clone() for k, v in first["operator"].model.state_dict().items()}
    torch.save(weights, out / "reference" / "weights.pt")
    torchrun_two([str(WORKERS / "worker_fsdp_trainer.py"), str(out)], {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    reference = {name: w.drive(name, w.arguments(str(out / "ref" / name), name)) for name in w.RUNS if name != run}
    rest = {"start": w.RESUME_AT, "steps": w.STEPS - w.RESUME_AT, "weights": weights}
    reference[run] = w.drive(run, w.arguments(str(out / "ref" / run), run), checkpoint=str(out / "reference"), **rest)
    return ranks, reference, out


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = float(b.double().norm())
    return float((a.double() - b.double()).norm()) / (scale if scale > 0 else 1.0)


def _compared_logs(logs: list[dict[str, float]]) -> list[dict[str, float]]:
    keep = lambda name: any(name.startswith("subspace/" + p) for p in COMPARED)  # noqa: E731
    return [{k: v for k, v in record.items() if keep(k)} for record in logs]


def _full_basis(ranks: list[dict], name: str, dim: int) -> torch.Tensor:
    vectors = torch.zeros(dim, ranks[0][name]["basis"].shape[1], dtype=torch.float64)
    for r in ranks:
        vectors[r[name]["rows"]] = r[name]["basis"].double()
    return vectors


@pytest.mark.parametrize("name", list(TOL))
def test_fsdp2_schedule_gives_the_losses_updates_and_metrics_of_the_unsharded_model(runs, name: str) -> None:
    ranks, reference, _ = runs
    ref, tol = reference[name], TOL[name]
    r0, r1 = ranks[0][name], ranks[1][name]
    assert r0["world"] == 2 and r0["fsdp"] and not ref["fsdp"]
    assert r0["losses"] == r1["losses"] and r0["losses"] == pytest.approx(ref["losses"], rel=tol)
    before = [p.detach().clone() for p in ref["params"][0]]  # updates from step 1 on (step 0 from the same init)
    for step, (mine, theirs) in enumerate(zip(r0["params"], ref["params"])):
        for a, b, other in zip(mine, theirs, r1["params"][step]):
            assert torch.equal(a, other)  # the full parameters are the same on both ranks
            assert _rel(a, b) <= tol
        if step:
            update = torch.cat([(a - p).reshape(-1) for a, p in zip(mine, before)])
            expected = torch.cat([(b - p).reshape(-1) for b, p in zip(theirs, ref["params"][step - 1])])
            assert _rel(update, expected) <= 10 * tol, step  # the projected update itself
            before = mine
    mine_logs, their_logs = _compared_logs(r0["logs"]), _compared_logs(ref["logs"])
    assert [sorted(x) for x in mine_logs] == [sorted(x) for x in their_logs]
    assert sum(len(x) for x in mine_logs) >= 3 * len(r0["losses"])
    for a, b in zip(mine_logs, their_logs):
        for key, value in b.items():
            assert a[key] == pytest.approx(value, rel=10 * tol, abs=tol), key
    basis = ref["callback"].state.basis
    full = _full_basis(ranks, name, basis.dim)
    assert subspace_distance(full, basis.vectors.double()) <= 10 * tol
    assert torch.allclose(r0["eigenvalues"].double(), basis.eigenvalues.double(), rtol=tol)


@pytest.mark.parametrize("name", ["bulk_gradient", "resumed_float32"])
def test_fsdp2_basis_checkpoint_resumes_whole_split_or_sharded(runs, name: str) -> None:
    ranks, _, out = runs
    assert ranks[0][name]["reload_equal"] and ranks[1][name]["reload_equal"]  # same sharding: each its own file
    folder = str(out / name / "checkpoint")
    whole = load_subspace_state(folder, None, torch.device("cpu"))
    dim = whole["settings"]["dim"]
    full = _full_basis(ranks, name, dim)
    assert torch.equal(whole["basis"]["vectors"].double(), full) and whole["basis"]["rows"] is None
    assert whole["warm_start"].shape[0] == dim
    for rank in (0, 1):  # into a row split of another run with two processes
        rows = RowShard(dim, 2, rank)
        split = load_subspace_state(folder, rows, torch.device("cpu"))
        assert torch.equal(split["basis"]["vectors"].double(), full[rows.start : rows.stop])
        assert split["basis"]["rows"] == (dim, 2, rank)
