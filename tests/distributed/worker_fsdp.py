"""Two-process worker: an FSDP2 (``fully_shard``) model; products and eigenpairs by finite differences."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from worker_core import problem_in, start_two

from hf_subspace import HessianOperator, top_eigenpairs


def main(out_dir: str) -> None:
    world, rank = start_two()
    results: dict = {"world": world}
    for dtype in (torch.float64, torch.float32):
        model, batches = problem_in(dtype)
        mesh = init_device_mesh("cpu", (world,))
        for module in model.children():
            fully_shard(module, mesh=mesh)
        fully_shard(model, mesh=mesh)
        shard = batches[rank::world]
        shard = shard[: 3 if rank == 0 else 4]  # unequal batch counts: the extra backward must still match up
        op = HessianOperator(model, shard)
        before = [p.to_local().detach().clone() for p in op.params]
        rows = op.local_rows
        block = torch.randn(op.dim, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(dtype)
        r: dict = {"rows": rows, "dim": op.dim, "hv": op.matmat(block[rows]), "grad": op.loss_and_gradient()}
        r["bitwise"] = all(torch.equal(p.to_local(), b) for p, b in zip(op.params, before))
        tol = 1e-8 if dtype == torch.float64 else 1e-3
        res = top_eigenpairs(op, 3, method="lobpcg", tol=tol, seed=1)
        r["eig"] = (res.eigenvalues, res.eigenvectors)
        r["bitwise_after_solve"] = all(torch.equal(p.to_local(), b) for p, b in zip(op.params, before))
        r["product"] = op.product
        results[str(dtype)] = r
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
