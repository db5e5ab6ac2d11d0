"""Block Hessian products: the column loop vs one vectorised double backward (``HessianOperator(block_product=...)``).

For the paper's MLP (MNIST-sized inputs), CNN (CIFAR-10-shaped inputs) and SST-2 transformer (64 random tokens) and
each block width ``m`` in ``--ms``, the script times ``op.matmat(V)`` (one pass over the Hessian dataset) with

* ``loop``: one backward per column through the retained gradient graph (the CPU default);
* ``batched``: one ``is_grads_batched`` backward per batch for all ``m`` columns;

checks that both give the same product, records what ``block_product="auto"`` chose (on CUDA it times both once on
the first block pass), and prints a table with the ratio ``t(loop) / t(batched)`` (> 1: batched is faster) and the
peak GPU memory of each. Data are random (cost does not depend on content), so no data files are needed.

One call on a lent GPU (about 2 minutes on an H200):
    python benchmarks/gpu_block_product.py --device cuda
Locally: ``python benchmarks/gpu_block_product.py --quick`` (CPU, seconds).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import bench_utils as bu
import torch

from hf_subspace import HessianOperator

MODELS = ("mlp", "cnn", "transformer")


def build(name: str, args: argparse.Namespace, device: torch.device) -> tuple[torch.nn.Module, list[dict], str]:
    """The model and its Hessian batches on ``device``, plus a description of the data."""
    gen = torch.Generator().manual_seed(args.seed)
    quick = args.quick
    if name == "mlp":
        n = 200 if quick else args.samples
        x, y = torch.rand(n, 784, generator=gen), torch.randint(0, 10, (n,), generator=gen)
        model = bu.make_mlp(784, [32, 32] if quick else [200, 200], seed=args.seed)
        batches, data = bu.make_batches(x, y, args.batch_size), f"{n} × 784 random"
    elif name == "cnn":
        n = 32 if quick else args.samples
        x, y = bu.synthetic_cifar(n, args.seed)
        model = bu.make_cnn(seed=args.seed)
        batches, data = bu.make_batches(x, y, args.batch_size), f"{n} × 3×32×32 random"
    else:
        n, length = (16, 16) if quick else (args.samples // 5, 64)
        ids = torch.randint(2, 8000, (n, length), generator=gen)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        overrides = {"intermediate_size": 64, "hidden_size": 32} if quick else {"max_position_embeddings": 64}
        model = bu.make_transformer(8000, seed=args.seed, **overrides)
        batches, data = (
            bu.make_batches(inputs, torch.randint(0, 2, (n,), generator=gen), args.batch_size // 4),
            (f"{n} × {length} random tokens"),
        )
    return model.to(device), bu.to_device(batches, device), data


def measure(op: HessianOperator, block: torch.Tensor, repeats: int, device: torch.device) -> dict[str, Any]:
    op.matmat(block)  # warm-up (and, for "auto" on CUDA, the one-off choice)
    times, out = [], None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(repeats):
        t = bu.timed(lambda: op.matmat(block), device)
        times.append(t.wall)
        out = t.result
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"seconds": bu.summarize(times), "peak_mib": peak, "product": out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bu.add_common_args(parser, "gpu_block_product.json")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--ms", nargs="+", type=int, default=[10, 20])
    parser.add_argument("--samples", type=int, default=5000, help="Hessian samples (transformer: a fifth)")
    parser.add_argument("--batch-size", type=int, default=1000, help="Hessian batch size (transformer: a quarter)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    bu.setup_process(args.threads)
    device = bu.resolve_device(args.device)
    info = bu.environment_info(device)
    rows, records = [], []
    for name in args.models:
        model, batches, data = build(name, args, device)
        for m in args.ms if not args.quick else [4]:
            ops = {method: HessianOperator(model, batches, block_product=method) for method in ("loop", "batched")}
            auto = HessianOperator(model, batches)
            block = torch.randn(ops["loop"].dim, m, generator=torch.Generator().manual_seed(args.seed)).to(device)
            with bu.quiet_warnings():
                res = {method: measure(op, block, args.repeats, device) for method, op in ops.items()}
                auto.matmat(block)
            loop, batched = res["loop"], res["batched"]
            diff = float((loop["product"] - batched["product"]).norm() / loop["product"].norm())
            ratio = loop["seconds"]["median"] / batched["seconds"]["median"]
            chosen = auto._block_method or "loop"
            rows.append(
                [
                    name,
                    f"{bu.num_params(model):,}",
                    m,
                    bu.fmt_stat(loop["seconds"]),
                    bu.fmt_stat(batched["seconds"]),
                    bu.fmt_num(ratio),
                    bu.fmt_num(loop["peak_mib"]),
                    bu.fmt_num(batched["peak_mib"]),
                    chosen,
                    f"{diff:.1e}",
                ]
            )
            records.append(
                {
                    "model": name,
                    "data": data,
                    "d": bu.num_params(model),
                    "m": m,
                    "loop_s": loop["seconds"],
                    "batched_s": batched["seconds"],
                    "loop_over_batched": ratio,
                    "loop_peak_mib": loop["peak_mib"],
                    "batched_peak_mib": batched["peak_mib"],
                    "auto_choice": chosen,
                    "relative_difference": diff,
                }
            )
            print(f"{name} m={m}: loop {loop['seconds']['median']:.4f}s batched {batched['seconds']['median']:.4f}s")
        del model, batches
        if device.type == "cuda":
            torch.cuda.empty_cache()
    headers = ["model", "d", "m", "loop s", "batched s", "loop/batched", "loop MiB", "batched MiB", "auto", "rel diff"]
    print(f"\nBlock product on {device} (median [min–max] of {args.repeats} matmat passes)\n")
    print(bu.markdown_table(headers, rows))
    bu.write_json(bu.output_path(args, "gpu_block_product.json"), {"environment": info, "results": records})
    return 0


if __name__ == "__main__":
    sys.exit(main())
