"""FSDP2 (``fully_shard`` over two real gloo processes): products and eigenpairs by finite differences against the
exact unsharded float64 reference; the parameters bitwise unchanged."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from _torchrun import torchrun_two

from hf_subspace import HessianOperator, top_eigenpairs

WORKERS = Path(__file__).resolve().parent / "distributed"
pytestmark = pytest.mark.distributed

#: (products and eigenvalues, eigenspace) relative tolerances: the finite-difference error is ~u^(2/3).
TOL = {"torch.float64": (1e-8, 1e-6), "torch.float32": (1e-3, 5e-2)}


def test_fsdp2_products_and_eigenpairs_match_the_exact_reference(tmp_path):
    sys.path.insert(0, str(WORKERS))
    from worker_core import problem

    torchrun_two([str(WORKERS / "worker_fsdp.py"), str(tmp_path)], {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert ranks[0]["world"] == 2
    model, batches = problem()
    op = HessianOperator(model, batches[0::2][:3] + batches[1::2][:4])  # what the two ranks held
    block = torch.randn(op.dim, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    hv, (loss, grad) = op.matmat(block), op.loss_and_gradient()
    ref = top_eigenpairs(op, 3, tol=1e-10)
    for dtype, (tol, tol_space) in TOL.items():
        runs = [r[dtype] for r in ranks]
        assert all(r["product"] == "finite_difference" and r["bitwise"] and r["bitwise_after_solve"] for r in runs)
        full_hv = torch.zeros_like(hv)
        full_grad = torch.zeros_like(grad)
        vectors = torch.zeros(op.dim, 3, dtype=torch.float64)
        for r in runs:  # each rank's rows: its local shard of every parameter
            full_hv[r["rows"]], full_grad[r["rows"]] = r["hv"].double(), r["grad"][1].double()
            vectors[r["rows"]] = r["eig"][1].double()
        assert runs[0]["rows"].numel() + runs[1]["rows"].numel() == op.dim
        assert float((full_hv - hv).norm() / hv.norm()) <= tol
        assert float((full_grad - grad).norm() / grad.norm()) <= 1e-6
        assert runs[0]["grad"][0] == pytest.approx(loss, rel=1e-6)
        assert torch.allclose(runs[0]["eig"][0].double(), ref.eigenvalues, rtol=tol)
        p_ref = ref.eigenvectors @ ref.eigenvectors.T
        assert float(torch.linalg.matrix_norm(vectors @ vectors.T - p_ref, ord=2)) <= tol_space
