"""Two-process worker: a causal LM's token-level Hessian with each rank holding sequences of unequal token counts."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _token_fixtures import lm_batches, tiny_gpt2

from hf_subspace import HessianOperator


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    world, rank = dist.get_world_size(), dist.get_rank()
    assert world == 2, f"expected 2 processes, got {world}"
    model = tiny_gpt2()
    shard = lm_batches(1)[rank::world]  # rank 0: lengths 2, 5, 3; rank 1: 12, 9, 7
    op = HessianOperator(model, shard)
    assert op.is_distributed
    block = torch.randn(op.dim, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    loss, grad = op.loss_and_gradient()
    results = {
        "world": world,
        "hv": op.matmat(block),
        "loss": loss,
        "grad": grad,
        "num_items": op.num_items,
        "local_items": sum(op.batch_items),
    }
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.barrier()  # neither rank tears gloo down while the other still works
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
