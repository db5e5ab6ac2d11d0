"""Per-process peak memory of a refresh with solver vectors split across processes (``shard_vectors``) or whole.

Each configuration runs in fresh processes under ``torchrun`` (``--nproc``; gloo on CPU): the paper's MLP
(784-w-w-10 on MNIST, ``--width``) and its Hessian set (``--samples`` images, each process a contiguous half), then
``HessianOperator(..., shard_vectors=...)`` and one warm-up product; then, per process, the kernel's peak resident set
during the refresh minus the resident set before it (``bench_utils.PeakMemory``), in units of d = one float32 vector of
the model, for ``lanczos`` (cold, k) and ``lobpcg-warm`` (from the basis of a cold solve before one SGD step; that
basis exists before and is not counted). The table gives the largest per-process peak and its ratio to the same
refresh with whole vectors in the same number of processes.

Run: ``python benchmarks/memory_split.py`` (about 5 minutes on two idle cores).
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
    x, y = bu.load_image_data("mnist", args.samples)
    model = bu.make_mlp(x.shape[1], (args.width, args.width), seed=0)
    model.eval()
    batches = bu.make_batches(x, y, 125)
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
        row = {"width": args.width, "d": op.dim, "k": args.k, "method": args.method, "nproc": world,
               "split": args.split, "peak_mib": float(peak), "hvps": res.num_matvecs}  # fmt: skip
        row["peak_d"] = row["peak_mib"] * 2**20 / (4 * op.dim)
        Path(args.result).write_text(json.dumps(row))
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=800)
    parser.add_argument("--samples", type=int, default=250)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/results/cpu/memory_split.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", default="lanczos", help=argparse.SUPPRESS)
    parser.add_argument("--split", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    rows = []
    for method in ("lanczos", "lobpcg-warm"):
        for nproc, split in ((1, False), (2, False), (2, True)):
            result = Path(args.out).with_suffix(f".{method}.{nproc}.{int(split)}.part")
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                   __file__, "--worker", "--method", method, "--width", str(args.width), "--samples",
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
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    table = [
        [r["method"], r["nproc"], "split" if r["split"] else "whole", f"{r['peak_d']:.1f} d",
         f"{r['peak_mib']:.0f}", f"{r['ratio_to_whole']:.2f}", r["hvps"]]
        for r in rows
    ]  # fmt: skip
    print(bu.markdown_table(["refresh", "processes", "vectors", "peak/process", "MiB", "÷ whole", "HVPs"], table))


if __name__ == "__main__":
    main()
