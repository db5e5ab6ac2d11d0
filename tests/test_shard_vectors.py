"""Solver vectors split across two real processes (``shard_vectors=True``) against whole vectors."""

from __future__ import annotations

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
