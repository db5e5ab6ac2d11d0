"""Two-process worker: HVPs and eigenpairs with each rank holding half of the Hessian batches."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _reference import TanhMLP, classification_batches

from hf_subspace import HessianOperator, hessian_trace, spectral_density, top_eigenpairs

BATCH_SIZES = [7, 3, 9, 4, 6, 8, 5, 2]


def problem() -> tuple[torch.nn.Module, list[dict]]:
    torch.manual_seed(0)
    model = TanhMLP(n_in=12, hidden=30, n_out=4).double()
    return model, classification_batches(BATCH_SIZES, (12,), n_out=4)


def problem_in(dtype: torch.dtype) -> tuple[torch.nn.Module, list[dict]]:
    """:func:`problem` in ``dtype`` (model and floating-point batch tensors)."""
    model, batches = problem()
    return model.to(dtype), [{k: v.to(dtype) if v.is_floating_point() else v for k, v in b.items()} for b in batches]


def start_two() -> tuple[int, int]:
    """Join the gloo group; ``(world, rank)``, the world asserted to be 2."""
    dist.init_process_group("gloo")
    world, rank = dist.get_world_size(), dist.get_rank()
    assert world == 2, f"expected 2 processes, got {world}"
    return world, rank


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    world, rank = dist.get_world_size(), dist.get_rank()
    assert world == 2, f"expected 2 processes, got {world}"
    model, batches = problem()
    shard = batches[rank::world]
    op = HessianOperator(model, shard)
    assert op.is_distributed and op.num_samples == sum(BATCH_SIZES)
    block = torch.randn(op.dim, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    results = {"world": world, "hv": op.matmat(block), "loss_grad": op.loss_and_gradient()}
    with op.reusing_graphs():  # each rank keeps its own shard's graphs; the reduced products are unchanged
        built = op.num_graphs_built
        results["hv_kept"] = [op.matmat(block), op.matmat(block)]
        results["graphs_built"] = op.num_graphs_built - built
    for method in ("lanczos", "lobpcg", "eigsh"):
        res = top_eigenpairs(op, 4, method=method, seed=3)
        results[method] = (res.eigenvalues, res.eigenvectors, res.num_matvecs)
    results["trace"] = hessian_trace(op, 12, seed=4)
    results["density"] = spectral_density(op, 2, 6, seed=4)
    local = HessianOperator(model, shard, distributed=False)
    results["hv_local"] = local.matmat(block)
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.barrier()  # neither rank tears gloo down while the other still works
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
