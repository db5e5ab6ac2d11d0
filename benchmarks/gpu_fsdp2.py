"""Finite-difference and FSDP2 Hessian-vector products on a GPU, and the trainer under accelerate's FSDP2 plugin.

Run by ``benchmarks/gpu_fsdp2.sh`` under ``torchrun`` (nccl on CUDA, gloo on CPU for a dry run). Prints and writes
(``$OUT/fsdp2.json``) a table: the relative error of finite-difference products against the exact double-backward
product of the same unsharded model, for a BERT-style classifier with fused SDPA attention (no double backward there)
and with the math kernel; the same for its ``fully_shard`` copy, the top-k eigenvalues, whether θ is bitwise
unchanged, and what ``SubspaceTrainer`` does with ``fsdp="full_shard"`` + ``fsdp_version: 2``.
"""

from __future__ import annotations

import json
import os
import time

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from transformers import BertConfig, BertForSequenceClassification

from hf_subspace import HessianOperator, top_eigenpairs

#: (hidden size, layers, sequence length, batch size, k): the GPU size, and a tiny one for the CPU dry run.
SIZE = (128, 2, 48, 32, 5) if os.environ.get("DEVICE", "cuda") == "cuda" else (16, 1, 8, 4, 2)


def _model(device: torch.device, attention: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=1000,
        hidden_size=SIZE[0],
        num_hidden_layers=SIZE[1],
        num_attention_heads=4,
        intermediate_size=2 * SIZE[0],
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    config._attn_implementation = attention
    return BertForSequenceClassification(config).to(device)


def _batches(device: torch.device, rank: int, world: int) -> list[dict]:
    gen = torch.Generator().manual_seed(1)
    all_batches = [
        {
            "input_ids": torch.randint(0, 1000, (SIZE[3], SIZE[2]), generator=gen),
            "labels": torch.randint(0, 2, (SIZE[3],), generator=gen),
        }
        for _ in range(4)
    ]
    return [{k: v.to(device) for k, v in b.items()} for b in all_batches[rank::world]]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).double().norm() / b.double().norm()).item())


def main() -> None:
    cuda = torch.cuda.is_available() and os.environ.get("DEVICE", "cuda") == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", rank % max(1, torch.cuda.device_count())) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    rows: dict = {"device": str(device), "world": world, "torch": torch.__version__}
    batches = _batches(device, rank, world)
    exact_op = HessianOperator(_model(device, "eager"), batches)  # math attention: exact double backward
    block = torch.randn(exact_op.dim, 4, generator=torch.Generator().manual_seed(2)).to(device)
    exact = exact_op.matmat(block)
    for attention in ("eager", "sdpa"):
        start = time.perf_counter()
        fd = HessianOperator(_model(device, attention), batches, product="finite_difference").matmat(block)
        rows[f"fd_{attention}_rel_error"] = _rel(fd, exact)
        rows[f"fd_{attention}_seconds"] = time.perf_counter() - start
    sharded = _model(device, "sdpa")
    mesh = init_device_mesh(device.type, (world,))
    for layer in sharded.bert.encoder.layer:
        fully_shard(layer, mesh=mesh)
    fully_shard(sharded, mesh=mesh)
    op = HessianOperator(sharded, batches)
    before = [p.to_local().detach().clone() for p in op.params]
    rows_here = op.local_rows.to(device)
    rows["fsdp2_rel_error_local_rows"] = _rel(op.matmat(block[rows_here]), exact[rows_here])
    values = top_eigenpairs(op, SIZE[4], method="lobpcg", tol=1e-3, seed=0).eigenvalues
    reference = top_eigenpairs(exact_op, SIZE[4], method="lobpcg", tol=1e-3, seed=0).eigenvalues
    rows["fsdp2_top_k_rel_error"] = _rel(values, reference)
    rows["fsdp2_theta_bitwise"] = all(torch.equal(p.to_local(), b) for p, b in zip(op.params, before))
    rows["trainer_fsdp2"] = _trainer_path()
    if rank == 0:
        text = json.dumps(rows, indent=1)
        print(text)
        out = os.environ.get("OUT")
        if out:
            with open(os.path.join(out, "fsdp2.json"), "w", encoding="utf-8") as fh:
                fh.write(text)
    dist.barrier()
    dist.destroy_process_group()


def _trainer_path() -> str:
    """What SubspaceTrainingArguments does with accelerate's FSDP2 plugin (refused today: the message)."""
    from hf_subspace import SubspaceTrainingArguments

    try:
        SubspaceTrainingArguments(
            output_dir="/tmp/fsdp2-trainer", fsdp="full_shard", fsdp_config={"fsdp_version": 2}, report_to="none"
        )
    except ValueError as err:
        return f"refused: {err}"
    return "accepted"


if __name__ == "__main__":
    main()
