"""Per-process peak memory of a refresh with solver vectors split across processes (``shard_vectors``) or whole.

Each configuration runs in fresh processes under ``torchrun`` (``--nproc``; gloo on CPU): the paper's MLP
(784-w-w-10 on MNIST, ``--width``) and its Hessian set (``--samples`` images, each process a contiguous half), then
``HessianOperator(..., shard_vectors=...)`` and one warm-up product; then, per process, the kernel's peak resident set
during the refresh minus the resident set before it (``bench_utils.PeakMemory``), in units of d = one float32 vector of
the model, for ``lanczos`` (cold, k) and ``lobpcg-warm`` (from the basis of a cold solve before one SGD step; that
basis exists before and is not counted). The table gives the largest per-process peak and its ratio to the same
refresh with whole vectors in the same number of processes.

``--model bert``: the same on a small BERT classifier built from ``BertConfig`` (``--hidden``, ``--layers``, eager
attention, random tokens of ``--seq`` positions), whose vector counts in units of d then give BERT-base's per-process
bytes (d = 109,483,778 for ``BertForSequenceClassification``, 2 labels) as ``count × 4 B × d``: derived, not measured
(activations of the Hessian batches count in units of the small model's d, which overstates them for BERT-base).

Run: ``python benchmarks/memory_split.py`` (about 5 minutes on two idle cores); ``--model bert`` about 3 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import bench_utils as bu
import torch

from hf_subspace import HessianOperator, top_eigenpairs
from hf_subspace import distributed as dist


def worker(args: argparse.Namespace) -> None:
    bu.setup_process(1)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        torch.distributed.init_process_group("gloo")
    world, rank = dist.world_size(), dist.rank()
    model, batches = _bert(args) if args.model == "bert" else _mlp(args)
    model.eval()
    mine = batches[rank * len(batches) // world : (rank + 1) * len(batches) // world]
    op = HessianOperator(model, mine, shard_vectors=args.split)
    op.matmat(torch.zeros(op.local_dim, 1))
    init = None
    if args.method == "lobpcg-warm":
        init = top_eigenpairs(op, args.k, method="lanczos", tol=1e-3).eigenvectors
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)), alpha=1e-3)
    with bu.PeakMemory(torch.device("cpu")) as mem:
        res = top_eigenpairs(op, args.k, init=init, method="lanczos" if init is None else "lobpcg", tol=1e-3)
    peak = torch.tensor([mem.mib or 0.0], dtype=torch.float64)
    if world > 1:
        torch.distributed.all_reduce(peak, op=torch.distributed.ReduceOp.MAX)
    if rank == 0:
        row = {"model": args.model, "width": args.hidden if args.model == "bert" else args.width, "d": op.dim, "k": args.k, "method": args.method, "nproc": world,
               "split": args.split, "peak_mib": float(peak), "hvps": res.num_matvecs}  # fmt: skip
        row["peak_d"] = row["peak_mib"] * 2**20 / (4 * op.dim)
        Path(args.result).write_text(json.dumps(row))
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


#: Parameters of BertForSequenceClassification at bert-base size (2 labels), for the derived per-process bytes.
BERT_BASE_D = 109_483_778


def _mlp(args: argparse.Namespace) -> tuple[torch.nn.Module, list]:
    x, y = bu.load_image_data("mnist", args.samples)
    return bu.make_mlp(x.shape[1], (args.width, args.width), seed=0), bu.make_batches(x, y, 125)


def _bert(args: argparse.Namespace) -> tuple[torch.nn.Module, list]:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=8000,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        intermediate_size=4 * args.hidden,
        max_position_embeddings=args.seq,
        attn_implementation="eager",
    )
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, config.vocab_size, (args.samples, args.seq), generator=gen)
    labels = torch.randint(0, 2, (args.samples,), generator=gen)
    return BertForSequenceClassification(config), bu.make_batches({"input_ids": ids}, labels, 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("mlp", "bert"), default="mlp")
    parser.add_argument("--width", type=int, default=800, help="MLP width")
    parser.add_argument("--hidden", type=int, default=64, help="BERT hidden size")
    parser.add_argument("--layers", type=int, default=2, help="BERT layers")
    parser.add_argument("--seq", type=int, default=16, help="BERT sequence length")
    parser.add_argument("--samples", type=int, default=None, help="Hessian samples (MLP 250, BERT 32)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", default=None, help="default benchmarks/results/cpu/memory_split[_bert].json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", default="lanczos", help=argparse.SUPPRESS)
    parser.add_argument("--split", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.samples = args.samples or (32 if args.model == "bert" else 250)
    args.out = args.out or f"benchmarks/results/cpu/memory_split{'_bert' if args.model == 'bert' else ''}.json"
    if args.worker:
        return worker(args)
    rows = []
    for method in ("lanczos", "lobpcg-warm"):
        for nproc, split in ((1, False), (2, False), (2, True)):
            result = Path(args.out).with_suffix(f".{method}.{nproc}.{int(split)}.part")
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                   __file__, "--worker", "--method", method, "--model", args.model, "--width", str(args.width),
                   "--hidden", str(args.hidden), "--layers", str(args.layers), "--seq", str(args.seq), "--samples",
                   str(args.samples), "--k", str(args.k), "--result", str(result)] + (["--split"] if split else [])  # fmt: skip
            root = str(Path(__file__).resolve().parents[1])
            path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
            subprocess.run(
                cmd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
            )
            rows.append(json.loads(result.read_text()))
            result.unlink()
            print(rows[-1], flush=True)
    for row in rows:
        base = next(r for r in rows if r["method"] == row["method"] and r["nproc"] == row["nproc"] and not r["split"])
        row["ratio_to_whole"] = row["peak_mib"] / base["peak_mib"]
        row["bert_base_gib_derived"] = row["peak_d"] * 4 * BERT_BASE_D / 2**30
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    table = [
        [r["method"], r["nproc"], "split" if r["split"] else "whole", f"{r['peak_d']:.1f} d",
         f"{r['peak_mib']:.0f}", f"{r['ratio_to_whole']:.2f}", r["hvps"], f"{r['bert_base_gib_derived']:.1f}"]
        for r in rows
    ]  # fmt: skip
    head = ["refresh", "processes", "vectors", "peak/process", "MiB", "÷ whole", "HVPs", "BERT-base GiB (derived)"]
    print(bu.markdown_table(head, table))


if __name__ == "__main__":
    main()
