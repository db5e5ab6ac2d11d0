"""What a refresh costs when the top-k eigenspace moves fast: CIFAR-10 CNN along Dom-SGD (issue 12).

After the switch (500 SGD steps, lr 0.01, batch 50 on the shipped 5k CIFAR-10 subset), each of ``--steps`` Dom-SGD
steps is projected onto the reference top-k basis of the previous step (LOBPCG to relative residual 3e-4 on a 250-image
Hessian set). At each step the drift ‖P_{t−1} − P_t‖₂ of the reference is measured, and warm LOBPCG refreshes from
the previous step's basis are counted for k + 1 pairs at relative residual 1e-3 / 3e-3 / 1e-2 and for k pairs at
1e-3: Hessian-vector products and the error ‖P − P_ref‖₂ of the result. This tells how much a looser refresh
tolerance could save when certified tracking (``subspace_basis_tol``) has to refresh at every step.

Run: ``python benchmarks/fast_drift_refresh.py --threads 2`` (≈ 6 min on 2 idle cores).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import bench_utils as bu
import torch
import tracking_cost as tc
from tqdm.auto import tqdm

from hf_subspace import HessianOperator
from hf_subspace.eigensolvers import top_eigenpairs
from hf_subspace.subspace import SubspaceBasis, projector_distance

VARIANTS = (("k+1 @ 1e-3", 1, 1e-3), ("k+1 @ 3e-3", 1, 3e-3), ("k+1 @ 1e-2", 1, 1e-2), ("k @ 1e-3", 0, 1e-3))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--steps", type=int, default=8, help="Dom-SGD steps measured after the switch")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fast_drift_refresh.json")
    args = parser.parse_args(argv)
    bu.setup_process(args.threads)
    k = args.k
    mc = tc.parse_args(["--cifar-hessian", "250"]).models["cifar"]  # tracking_cost's CIFAR-10 setup
    model, x, y = tc.load_model_data("cifar", mc["train"], 0)
    hessian = mc["hessian"]
    op = HessianOperator(model, bu.make_batches(x[:hessian], y[:hessian], mc["hessian_batch"]))
    gen = torch.Generator().manual_seed(0)
    bu.sgd_steps(model, x, y, mc["switch"], mc["lr"], mc["batch"], gen)
    with bu.quiet_warnings():
        first = top_eigenpairs(op, k + 1, method="lanczos", tol=1e-3, seed=0)
    warm, basis = first.eigenvectors, SubspaceBasis(first.eigenvectors[:, :k])
    rows: list[dict[str, Any]] = []
    for t in tqdm(range(1, args.steps + 1), desc="Dom-SGD steps"):
        tc.sgd_step(model, x, y, mc["lr"], mc["batch"], gen, "dominant", basis)
        with bu.quiet_warnings():
            ref = top_eigenpairs(op, k + 1, method="lobpcg", init=warm, tol=3e-4, seed=t)
        ref_basis = SubspaceBasis(ref.eigenvectors[:, :k])
        row: dict[str, Any] = {"step": t, "drift": projector_distance(basis, ref_basis)}
        for name, extra, tol in VARIANTS:
            with bu.quiet_warnings():
                res = top_eigenpairs(op, k + extra, method="lobpcg", init=warm[:, : k + extra], tol=tol, seed=t)
            row[name] = {
                "hvps": res.num_matvecs,
                "error": projector_distance(SubspaceBasis(res.eigenvectors[:, :k]), ref_basis),
            }
        rows.append(row)
        warm, basis = ref.eigenvectors, ref_basis
    headers = ["step", "drift", *(f"{n}: HVPs / error" for n, _, _ in VARIANTS)]
    table = [
        [r["step"], f"{r['drift']:.3f}", *(f"{r[n]['hvps']} / {r[n]['error']:.4f}" for n, _, _ in VARIANTS)]
        for r in rows
    ]
    print(bu.markdown_table(headers, table))
    base = sum(r["k+1 @ 1e-3"]["hvps"] for r in rows)
    ratios = {n: sum(r[n]["hvps"] for r in rows) / base for n, _, _ in VARIANTS}
    print("HVPs vs k+1 @ 1e-3: " + ", ".join(f"{n} {v:.2f}×" for n, v in ratios.items()))
    result = {
        "benchmark": "fast_drift_refresh",
        "config": vars(args) | {"out": str(args.out)},
        "rows": rows,
        "ratios_vs_k+1_1e-3": ratios,
    }
    bu.write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
