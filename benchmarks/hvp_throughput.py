"""Batched Hessian-vector products: ``m`` columns in one ``HessianOperator.matmat`` pass vs ``m`` ``matvec`` passes.

For each model (the paper's MLP on MNIST-5k, CNN on CIFAR-10-shaped inputs, SST-2 transformer on real SST-2
sentences) and each ``m`` in ``--ms`` the script times

* ``matmat``: ``op.matmat(V)`` with ``V`` of shape ``[d, m]`` (one pass over the Hessian dataset: one forward and
  gradient graph per batch, ``m`` double-backward calls on it);
* ``matvec``: ``op.matvec(V[:, j])`` for ``j = 1..m`` (``m`` passes, each with its own forward and graph),

* ``batched`` (what-if, not library code): one ``is_grads_batched`` double-backward per batch for all ``m``
  columns (``--no-batched`` to skip),

and reports the time per HVP, the speedup ``t(matvec × m) / t(matmat)`` and the peak memory of each (kernel peak RSS
above the level at the call on CPU, ``torch.cuda.max_memory_allocated`` on GPU). The two results are compared
(relative difference) as a check. Medians with [min–max] over ``--repeats``.

Run: ``python benchmarks/hvp_throughput.py`` (~5 min on 2 idle cores), ``--quick``, ``--device cuda``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import bench_utils as bu
import numpy as np
import torch

from hf_subspace import HessianOperator

MODELS = ("mlp", "cnn", "transformer")


def build(model_name: str, args: argparse.Namespace, device: torch.device) -> tuple[HessianOperator, dict[str, Any]]:
    """The model, its Hessian dataset (on ``device``) and the operator."""
    quick = args.quick
    if model_name == "mlp":
        n = args.mlp_samples if not quick else 200
        x, y = bu.load_image_data("mnist" if bu.MNIST_NPZ.is_file() else "digits", n)
        model = bu.make_mlp(x.shape[1], [200, 200] if not quick else [32, 32], seed=args.seed)
        batches = bu.make_batches(x, y, args.mlp_batch_size)
        data = "MNIST" if x.shape[1] == 784 else "digits"
    elif model_name == "cnn":
        n = args.cnn_samples if not quick else 32
        x, y = bu.synthetic_cifar(n, args.seed)
        model = bu.make_cnn(seed=args.seed)
        batches = bu.make_batches(x, y, args.cnn_batch_size)
        data = "random CIFAR-10-shaped 3×32×32"
    elif model_name == "transformer":
        n = args.transformer_samples if not quick else 16
        inputs, y, vocab = bu.load_sst2_data(n, max_length=64 if not quick else 16)
        overrides = {"max_position_embeddings": 64} if not quick else {"intermediate_size": 64, "hidden_size": 32}
        model = bu.make_transformer(vocab, seed=args.seed, **overrides)
        batches = bu.make_batches(inputs, y, args.transformer_batch_size)
        data = "SST-2 train sentences (64 tokens)"
    else:  # pragma: no cover - argparse restricts the names
        raise ValueError(model_name)
    model = model.to(device)
    op = HessianOperator(model, bu.to_device(batches, device))
    info = {
        "model": type(model).__name__,
        "data": data,
        "hessian_samples": op.num_samples,
        "batch_size": len(batches[0]["labels"]),
        "num_batches": len(batches),
        "d": op.dim,
    }
    return op, info


def batched_matmat(op: HessianOperator, block: torch.Tensor) -> torch.Tensor:
    """What-if, not library code: ``H @ block`` with all columns in ONE vectorised double-backward per batch.

    Same passes as ``HessianOperator.matmat`` (eval mode, one forward and gradient graph per batch), but the ``m``
    Hessian-vector products of a batch come from a single ``torch.autograd.grad(..., is_grads_batched=True)`` call
    (``vmap`` over the grad outputs) instead of a Python loop of ``m`` calls. Measured to see whether the library
    should switch to it (expected to pay off on GPUs, where the loop is launch-bound).
    """
    params, m = op.params, block.shape[1]
    rows = block.T.contiguous()
    parts, offset = [], 0
    for p in params:
        parts.append(rows[:, offset : offset + p.numel()].reshape(m, *p.shape))
        offset += p.numel()
    total = torch.zeros(m, op.dim, dtype=op.dtype, device=block.device)
    was_training = op.model.training
    op.model.eval()
    try:
        with torch.enable_grad():
            for n, batch in zip(op.batch_sizes, op.batches):
                loss = op.loss_fn(op.model, batch)
                grads = torch.autograd.grad(loss, params, create_graph=True)
                hv = torch.autograd.grad(grads, params, grad_outputs=parts, is_grads_batched=True)
                total.add_(torch.cat([h.reshape(m, -1) for h in hv], dim=1), alpha=n)
    finally:
        op.model.train(was_training)
    return (total / op.num_samples).T


def measure(
    op: HessianOperator, m: int, repeats: int, device: torch.device, seed: int, batched: bool = False
) -> dict[str, Any]:
    """Time and peak memory of one ``matmat`` of ``m`` columns and of ``m`` separate ``matvec`` calls
    (and of :func:`batched_matmat` when ``batched``)."""
    gen = torch.Generator().manual_seed(seed + m)
    block = torch.randn(op.dim, m, generator=gen).to(device=device, dtype=op.dtype)
    modes = ("matmat", "matvec", "batched") if batched else ("matmat", "matvec")
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    cpu: dict[str, list[float]] = {mode: [] for mode in modes}
    memory: dict[str, float | None] = {}
    outputs: dict[str, torch.Tensor] = {}
    for r in range(repeats):
        # Alternate the order so slow drifts of a shared machine hit every mode alike.
        order = modes if r % 2 == 0 else modes[::-1]
        for mode in order:
            if mode == "matmat":
                fn = lambda: op.matmat(block)  # noqa: E731
            elif mode == "batched":
                fn = lambda: batched_matmat(op, block)  # noqa: E731
            else:
                fn = lambda: torch.stack([op.matvec(block[:, j]) for j in range(m)], dim=1)  # noqa: E731
            with bu.PeakMemory(device) as mem:
                timing = bu.timed(fn, device)
            times[mode].append(timing.wall)
            cpu[mode].append(timing.cpu)
            if r == 0:
                memory[mode] = mem.mib
                outputs[mode] = timing.result
    diff = float((outputs["matmat"] - outputs["matvec"]).norm() / outputs["matvec"].norm().clamp_min(1e-30))
    speedups = [v / b for v, b in zip(times["matvec"], times["matmat"])]
    extra: dict[str, Any] = {}
    if batched:
        extra = {
            "batched_per_hvp_s": bu.summarize([t / m for t in times["batched"]]),
            "batched_speedup_of_medians": float(np.median(times["matvec"]) / np.median(times["batched"])),
            "batched_peak_mib": memory.get("batched"),
            "batched_rel_diff": float(
                (outputs["batched"] - outputs["matvec"]).norm() / outputs["matvec"].norm().clamp_min(1e-30)
            ),
        }
    return {
        **extra,
        "m": m,
        "matmat_s": bu.summarize(times["matmat"]),
        "matvec_s": bu.summarize(times["matvec"]),
        "matmat_cpu_s": bu.summarize(cpu["matmat"]),
        "matvec_cpu_s": bu.summarize(cpu["matvec"]),
        "matmat_per_hvp_s": bu.summarize([t / m for t in times["matmat"]]),
        "matvec_per_hvp_s": bu.summarize([t / m for t in times["matvec"]]),
        "speedup": bu.summarize(speedups),
        "speedup_of_medians": float(np.median(times["matvec"]) / np.median(times["matmat"])),
        "cpu_speedup_of_medians": float(np.median(cpu["matvec"]) / max(np.median(cpu["matmat"]), 1e-12)),
        "matmat_peak_mib": memory.get("matmat"),
        "matvec_peak_mib": memory.get("matvec"),
        "rel_diff": diff,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bu.add_common_args(p, "hvp_throughput.json")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--ms", type=int, nargs="+", default=[1, 2, 5, 10, 20])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--batched",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the what-if vectorised double-backward (is_grads_batched)",
    )
    p.add_argument("--mlp-samples", type=int, default=5000)
    p.add_argument("--mlp-batch-size", type=int, default=1000)
    p.add_argument("--cnn-samples", type=int, default=1000)
    p.add_argument("--cnn-batch-size", type=int, default=250)
    p.add_argument("--transformer-samples", type=int, default=256)
    p.add_argument("--transformer-batch-size", type=int, default=128)
    args = p.parse_args(argv)
    if args.quick:
        args.ms = [m for m in args.ms if m <= 2] or [1, 2]
        args.repeats = 1
        args.mlp_batch_size, args.cnn_batch_size, args.transformer_batch_size = 100, 16, 8
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    bu.setup_process(args.threads)
    device = bu.resolve_device(args.device)
    env = bu.environment_info(device)
    results: dict[str, Any] = {}
    for name in args.models:
        op, info = build(name, args, device)
        op.matvec(torch.randn(op.dim, device=device, dtype=op.dtype))  # warm-up (allocator, kernels)
        print(
            f"hvp_throughput: {name} d={info['d']} N={info['hessian_samples']} batch={info['batch_size']} "
            f"device={device} threads={torch.get_num_threads()} load={os.getloadavg()[0]:.2f}",
            flush=True,
        )
        rows = []
        for m in args.ms:
            row = measure(op, m, args.repeats, device, args.seed, batched=args.batched)
            rows.append(row)
            print(
                f"  m={m:2d} matmat {row['matmat_s']['median']:.3f}s  {m}×matvec {row['matvec_s']['median']:.3f}s  "
                f"speedup {row['speedup_of_medians']:.2f}×  diff {row['rel_diff']:.1e}",
                flush=True,
            )
        results[name] = {**info, "rows": rows}
        del op

    goals = {}
    mlp = results.get("mlp")
    if mlp:
        row10 = next((r for r in mlp["rows"] if r["m"] == 10), None)
        if row10:
            target = 4.0 if device.type == "cuda" else 1.5
            goals["mlp_m10_speedup"] = {
                "speedup": row10["speedup_of_medians"],
                "target": target,
                "met": bool(row10["speedup_of_medians"] >= target),
            }
    result = {
        "benchmark": "hvp_throughput",
        "environment": bu.finish_environment(env),
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "results": results,
        "goals": goals,
    }
    print_tables(result)
    bu.write_json(bu.output_path(args, "hvp_throughput.json"), result)
    return result


def print_tables(result: dict[str, Any]) -> None:
    """One markdown table over all models and block sizes."""
    rows = []
    for name, res in result["results"].items():
        for r in res["rows"]:
            rows.append(
                [
                    f"{name} (d={res['d']:,}, N={res['hessian_samples']})",
                    r["m"],
                    bu.fmt_stat(r["matmat_per_hvp_s"]),
                    bu.fmt_stat(r["matvec_per_hvp_s"]),
                    f"{r['speedup_of_medians']:.2f}× ({bu.fmt_stat(r['speedup'])})",
                    f"{r['cpu_speedup_of_medians']:.2f}×",
                    bu.fmt_num(r["matmat_peak_mib"]),
                    bu.fmt_num(r["matvec_peak_mib"]),
                    f"{r['rel_diff']:.0e}",
                    bu.fmt_stat(r["batched_per_hvp_s"]) if "batched_per_hvp_s" in r else "–",
                    f"{r['batched_speedup_of_medians']:.2f}×" if "batched_per_hvp_s" in r else "–",
                    bu.fmt_num(r.get("batched_peak_mib")),
                ]
            )
    print("\nBatched HVP throughput: median [min–max] seconds per HVP; speedup = t(m matvec) / t(1 matmat)\n")
    headers = [
        "model",
        "m",
        "matmat s/HVP",
        "matvec s/HVP",
        "speedup (wall)",
        "speedup (CPU time)",
        "matmat peak MiB",
        "matvec peak MiB",
        "rel. diff",
        "what-if batched s/HVP",
        "batched speedup",
        "batched peak MiB",
    ]
    print(bu.markdown_table(headers, rows))
    for name, g in result["goals"].items():
        print(f"goal {name}: {g['speedup']:.2f}× vs target {g['target']}× → {'MET' if g['met'] else 'MISSED'}")


if __name__ == "__main__":
    main(sys.argv[1:])
