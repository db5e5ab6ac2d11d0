"""Solver vectors split across two real processes (``shard_vectors=True``) against whole vectors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from _torchrun import torchrun_two

WORKERS = Path(__file__).resolve().parent / "distributed"
pytestmark = pytest.mark.distributed

TOL = {"torch.float64": 1e-6, "torch.float32": 1e-5}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((torch.linalg.norm((a - b).double()) / torch.linalg.norm(b.double())).item())


def _joined(ranks: list[dict], key: str, which: int = 1) -> torch.Tensor:
    """The split results of both ranks (rows in rank order) as one full tensor."""
    return torch.cat([r[key][which] for r in ranks])


def _same_up_to_sign(a: torch.Tensor, b: torch.Tensor) -> float:
    signs = torch.sign((a * b).sum(0))
    return _rel(a * signs, b)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("shard")
    torchrun_two([str(WORKERS / "worker_shard.py"), str(out)], {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


@pytest.mark.parametrize("dtype", list(TOL))
def test_split_products_and_gradient_equal_whole(ranks, dtype):
    r = [x[dtype] for x in ranks]
    assert ranks[0]["world"] == 2 and r[0]["rows"][0] == 0 and r[0]["rows"][1] == r[1]["rows"][0]
    assert r[0]["hv"][1].shape[0] < r[0]["hv"][0].shape[0]  # really split
    assert _rel(_joined(r, "hv"), r[0]["hv"][0]) <= TOL[dtype]
    assert _rel(_joined(r, "grad"), r[0]["grad"][0]) <= TOL[dtype]


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("method", ["lanczos", "lobpcg", "warm"])
def test_split_eigenpairs_equal_whole(ranks, dtype, method):
    r = [x[dtype] for x in ranks]
    (values, vectors), (split_values, _) = r[0][method]
    assert _rel(split_values, values) <= TOL[dtype]
    assert torch.equal(split_values, r[1][method][1][0])
    split_vectors = torch.cat([x[method][1][1] for x in r])
    assert _same_up_to_sign(split_vectors, vectors) <= 10 * TOL[dtype]


def test_split_lock_in_equals_whole(ranks):
    # The final check finds an eigenvalue the sweep missed and locks it in; every decision of it must agree across
    # the two processes (a disagreement hangs or splits the result) and equal the whole-vector solve.
    whole, split = ranks[0]["lock_in"]
    assert torch.equal(split[0], ranks[1]["lock_in"][1][0]) and split[2] == ranks[1]["lock_in"][1][2] == whole[2]
    torch.testing.assert_close(split[0], torch.tensor([100.0, 60.0, 40.0, 20.0, 15.0], dtype=torch.float64))
    torch.testing.assert_close(whole[0], split[0], rtol=1e-12, atol=0)
    split_vectors = torch.cat([x["lock_in"][1][1] for x in ranks])
    assert _same_up_to_sign(split_vectors, whole[1]) <= 1e-8


@pytest.mark.parametrize("dtype", list(TOL))
def test_split_basis_chi_and_projected_updates_equal_whole(ranks, dtype):
    r = [x[dtype] for x in ranks]
    whole, split0, split1 = r[0]["basis"]["whole"], r[0]["basis"]["split"], r[1]["basis"]["split"]
    for key in ("chi", "bulk", "chi_list"):
        assert split0[key] == pytest.approx(whole[key], rel=TOL[dtype], abs=TOL[dtype]), key
        assert split0[key] == split1[key], key
    for key in ("coeffs", "sparse"):
        assert _rel(split0[key], whole[key]) <= TOL[dtype], key
    assert split0["rates"] == pytest.approx(whole["rates"], rel=TOL[dtype])
    for key in ("project_bulk", "project_dominant_"):
        for a, b in zip(split0[key], whole[key]):
            assert _rel(a, b) <= TOL[dtype], key
    for mode in ("dominant", "bulk"):
        for part in (0, 1):  # the parameters and the applied update, whole tensors on every rank
            for a, b, c in zip(
                split0[f"update_{mode}"][part], whole[f"update_{mode}"][part], split1[f"update_{mode}"][part]
            ):
                assert _rel(a, b) <= TOL[dtype] and torch.equal(a, c), mode
    assert r[0]["overlap"][1] == pytest.approx(r[0]["overlap"][0], rel=TOL[dtype])
    assert r[0]["distance"][1] == pytest.approx(r[0]["distance"][0], rel=1e-3, abs=TOL[dtype])


@pytest.fixture(scope="module")
def trainer_runs(tmp_path_factory):
    """Two-process SubspaceTrainer runs: split vectors with checkpoints, whole vectors, and a split resume."""
    out = tmp_path_factory.mktemp("trainer")
    for variant, folder in (("save", "split"), ("whole", "whole"), ("resume", "split")):
        torchrun_two(
            [str(WORKERS / "worker_trainer.py"), str(out / folder), variant],
            {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"},
        )
    read = lambda folder, variant: [  # noqa: E731
        json.loads((out / folder / f"rank{r}_{variant}.json").read_text()) for r in (0, 1)
    ]
    return out, read("split", "save"), read("whole", "whole"), read("split", "resume")


def test_trainer_split_vectors_give_the_losses_of_whole_vectors(trainer_runs):
    _, split, whole, _ = trainer_runs
    assert split[0]["world"] == whole[0]["world"] == 2 and len(split[0]["losses"]) == 6
    for key in ("losses", "full_loss"):
        assert split[0][key].keys() == whole[0][key].keys()
        for step, value in whole[0][key].items():
            assert split[0][key][step] == pytest.approx(value, rel=1e-6), (key, step)
    assert split[0]["eigenvalues"] == pytest.approx(whole[0]["eigenvalues"], rel=1e-5)
    assert split[0]["trace_steps"] == [3, 6]  # the trace estimate runs on a whole-vector view of the split Hessian
    built, rebuilt = split[0]["trace_graphs"]  # subspace_graph_cache_bytes=0 reached that view: nothing kept
    assert built == rebuilt > 0


def test_split_checkpoint_resumes_exactly_in_two_processes(trainer_runs):
    _, split, _, resumed = trainer_runs
    for step in ("4", "5", "6"):
        assert resumed[0]["losses"][step] == pytest.approx(split[0]["losses"][step], rel=1e-6), step
    assert resumed[0]["full_loss"]["6"] == pytest.approx(split[0]["full_loss"]["6"], rel=1e-6)
    assert resumed[0]["eigenvalues"] == pytest.approx(split[0]["eigenvalues"], rel=1e-5)


def test_split_checkpoint_resumes_in_one_process(trainer_runs):
    sys.path.insert(0, str(WORKERS))
    from worker_trainer import run

    from hf_subspace._shards import RowShard
    from hf_subspace.trainer import load_subspace_state

    out, split, _, _ = trainer_runs
    checkpoint = out / "split" / "checkpoint-3"
    whole = load_subspace_state(str(checkpoint), None, torch.device("cpu"))
    vectors = whole["basis"]["vectors"]
    assert vectors.shape[0] == whole["settings"]["dim"] and whole["basis"]["rows"] is None
    assert torch.allclose(vectors.T @ vectors, torch.eye(vectors.shape[1], dtype=vectors.dtype), atol=1e-5)
    for rank in (0, 1):  # the rows files hold exactly the two halves
        rows = RowShard(vectors.shape[0], 2, rank)
        part = load_subspace_state(str(checkpoint), rows, torch.device("cpu"))
        assert torch.equal(part["basis"]["vectors"], vectors[rows.start : rows.stop])
        assert torch.equal(part["warm_start"], whole["warm_start"][rows.start : rows.stop])
    single = run(str(out / "single"), 50, resume=str(checkpoint))
    assert not single.hessian_operator.shards_vectors
    history = {h["step"]: h["loss"] for h in single.state.log_history if "loss" in h}
    for step in (4, 5, 6):  # one process with twice the batch: the 2-process run to the DDP reduction's rounding
        assert history[step] == pytest.approx(split[0]["losses"][str(step)], rel=1e-4), step
