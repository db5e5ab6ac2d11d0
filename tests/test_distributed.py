"""Two real processes (torchrun, gloo) against one process on all the data."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _torchrun import torchrun_two

from hf_subspace import HessianOperator, hessian_trace, spectral_density, top_eigenpairs

WORKERS = Path(__file__).resolve().parent / "distributed"
pytestmark = pytest.mark.distributed


def _torchrun(worker: str, out_dir: Path, *extra: str) -> None:
    torchrun_two([str(WORKERS / worker), str(out_dir), *extra], {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((torch.linalg.norm(a - b) / torch.linalg.norm(b)).item())


def test_hessian_and_eigensolvers_match_one_process(tmp_path):
    sys.path.insert(0, str(WORKERS))
    from worker_core import problem

    _torchrun("worker_core.py", tmp_path)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    model, batches = problem()
    op = HessianOperator(model, batches)
    block = torch.randn(op.dim, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    hv = op.matmat(block)
    assert _rel(r0["hv"], hv) <= 1e-10 and torch.equal(r0["hv"], r1["hv"])
    assert r0["graphs_built"] == r1["graphs_built"] == 4  # this rank's 4 batches, once for both products
    for kept in (*r0["hv_kept"], *r1["hv_kept"]):
        assert torch.allclose(kept, r0["hv"], rtol=1e-12, atol=1e-14)
    loss, grad = op.loss_and_gradient()
    assert r0["loss_grad"][0] == pytest.approx(loss, rel=1e-12) and _rel(r0["loss_grad"][1], grad) <= 1e-10
    # Per-rank analysis (distributed=False) really is each rank's own, different Hessian.
    assert _rel(r0["hv_local"], hv) > 1e-2 and _rel(r1["hv_local"], hv) > 1e-2
    for method in ("lanczos", "lobpcg", "eigsh"):
        ref = top_eigenpairs(op, 4, method=method, seed=3)
        values0, vectors0, _ = r0[method]
        values1, vectors1, _ = r1[method]
        assert torch.equal(values0, values1) and torch.equal(vectors0, vectors1), method
        assert torch.allclose(values0, ref.eigenvalues, rtol=1e-5), method
        p_ref = ref.eigenvectors @ ref.eigenvectors.T
        assert torch.linalg.matrix_norm(vectors0 @ vectors0.T - p_ref, ord=2) <= 1e-5, method
    # trace and density: the same random vectors on every rank, identical results, equal to one process's
    assert r0["trace"] == r1["trace"] and r0["trace"] == pytest.approx(hessian_trace(op, 12, seed=4), rel=1e-8)
    grid, density = spectral_density(op, 2, 6, seed=4)
    assert np.array_equal(r0["density"][1], r1["density"][1])
    np.testing.assert_allclose(r0["density"][0], grid, rtol=1e-8)
    np.testing.assert_allclose(r0["density"][1], density, rtol=1e-6, atol=1e-10 * density.max())


def test_trainer_two_processes_match_one_process(tmp_path):
    sys.path.insert(0, str(WORKERS))
    from worker_trainer import run

    _torchrun("worker_trainer.py", tmp_path / "ddp")
    r0, r1 = (json.loads((tmp_path / "ddp" / f"rank{r}_plain.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["eigenvalues"] == r1["eigenvalues"]
    single = run(str(tmp_path / "single"), 50)
    history = single.state.log_history
    losses = {str(h["step"]): h["loss"] for h in history if "loss" in h}
    full = {str(h["step"]): h["subspace/full_train_loss"] for h in history if "subspace/full_train_loss" in h}
    assert set(r0["losses"]) == set(losses) and len(losses) == 6
    for step, value in losses.items():
        assert r0["losses"][step] == pytest.approx(value, rel=1e-4), step
    for step, value in full.items():
        assert r0["full_loss"][step] == pytest.approx(value, rel=1e-4), step
    assert torch.allclose(torch.tensor(r0["eigenvalues"]), single.subspace_state.basis.eigenvalues, rtol=1e-4)
