"""Kept first-order graphs (``HessianOperator.reusing_graphs``) against rebuilding them for every product.

For each setup (the paper's MLP on 1,000 MNIST images, its CNN on 1,000 CIFAR-10 images; one Hessian batch of
``--batch-size`` samples by default, i.e. the whole set in one graph) the same operator is timed twice, with
``graph_cache_bytes=0`` (every product runs the forward pass and the ``create_graph`` gradient again, the library's
behaviour before graph reuse) and with the default budget (inside ``reusing_graphs()``, after one product that builds
and keeps the graph):

* ``matvec``: one Hessian-vector product;
* ``matmat 10``: one block of 10 columns (one pass; the graph is shared by the columns either way);
* ``Lanczos top-10``: a whole cold ``top_eigenpairs(op, 10)`` solve (same seed, so the same products: it opens its own
  scope, so the cached run includes building the graph once).

Both runs' products are compared (relative difference) as a check; ``kept MiB`` is the graph size the operator
counted against its budget. Medians with [min–max] over ``--repeats``; wall and process CPU seconds.

Run: ``OMP_NUM_THREADS=1 python benchmarks/graph_reuse.py --threads 1`` (about 3 min of CPU), ``--quick`` (seconds).
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any

import bench_utils as bu
import torch

from hf_subspace import HessianOperator
from hf_subspace.eigensolvers import top_eigenpairs


def build(name: str, n: int, batch_size: int, seed: int, quick: bool) -> tuple[torch.nn.Module, list[dict[str, Any]]]:
    """The model (eval mode) and its Hessian batches: real MNIST / CIFAR-10 when staged, stand-ins otherwise."""
    if name == "mnist":
        if bu.MNIST_NPZ.is_file() and not quick:
            x, y = bu.load_mnist_data(n)
            x = (x - x.mean()) / x.std()
        else:
            x, y = bu.load_image_data("digits", n)
        model = bu.make_mlp(x.shape[1], [200, 200] if not quick else [16, 16], seed=seed)
    else:
        import tracking_cost as tc

        if bu.CIFAR_NPZ.is_file() and not quick:
            model, x, y = tc.load_model_data("cifar", n, seed)
        else:
            x, y = bu.synthetic_cifar(n, seed)
            model = bu.make_cnn(seed=seed)
    return model.eval(), bu.make_batches(x[:n], y[:n], batch_size)


def measure(op: HessianOperator, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Timings of one operator; products inside one reuse scope after a first (graph-building) product."""
    gen = torch.Generator().manual_seed(args.seed)
    vector = torch.randn(op.dim, generator=gen).to(device)
    block = torch.randn(op.dim, 10, generator=gen).to(device)
    out: dict[str, Any] = {}
    with op.reusing_graphs():
        op.matvec(vector)  # builds (and, with a budget, keeps) the graph
        out["kept_bytes"] = op._graphs.used
        runs = [bu.timed(lambda: op.matvec(vector), device) for _ in range(args.repeats)]
        out["matvec"] = runs
        out["matvec_result"] = runs[-1].result
        runs = [bu.timed(lambda: op.matmat(block), device) for _ in range(args.repeats)]
        out["matmat"] = runs
        out["matmat_result"] = runs[-1].result
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["solve"] = [bu.timed(lambda: top_eigenpairs(op, 10, seed=args.seed), device) for _ in range(2)]
    out["solve_hvps"] = out["solve"][-1].result.num_matvecs
    out["solve_values"] = out["solve"][-1].result.eigenvalues
    return out


def run_setup(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    model, batches = build(name, args.samples, args.batch_size, args.seed, args.quick)
    model = model.to(device)
    batches = bu.to_device(batches, device)
    timings = {
        mode: measure(HessianOperator(model, batches, graph_cache_bytes=budget), args, device)
        for mode, budget in (("rebuilt", 0), ("kept", None))
    }
    rebuilt, kept = timings["rebuilt"], timings["kept"]
    row: dict[str, Any] = {"d": bu.num_params(model), "batches": len(batches), "kept_MiB": kept["kept_bytes"] / 2**20}
    for what in ("matvec", "matmat", "solve"):
        for mode in ("rebuilt", "kept"):
            row[f"{what}_{mode}_wall"] = bu.summarize([t.wall for t in timings[mode][what]])
            row[f"{what}_{mode}_cpu"] = bu.summarize([t.cpu for t in timings[mode][what]])
        row[f"{what}_speedup"] = row[f"{what}_rebuilt_wall"]["median"] / row[f"{what}_kept_wall"]["median"]
        row[f"{what}_speedup_cpu"] = row[f"{what}_rebuilt_cpu"]["median"] / row[f"{what}_kept_cpu"]["median"]
    row["solve_hvps"] = (rebuilt["solve_hvps"], kept["solve_hvps"])
    row["rel_diff"] = max(
        float((kept[r] - rebuilt[r]).norm() / rebuilt[r].norm()) for r in ("matvec_result", "matmat_result")
    )
    row["eig_rel_diff"] = float(
        ((kept["solve_values"] - rebuilt["solve_values"]).abs() / rebuilt["solve_values"]).max()
    )
    print(
        f"{name}: d={row['d']} batches={row['batches']} kept {row['kept_MiB']:.1f} MiB, rel. diff {row['rel_diff']:.1e}"
    )
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bu.add_common_args(p, "graph_reuse.json")
    p.add_argument("--setups", nargs="+", default=["mnist", "cifar"], choices=["mnist", "cifar"])
    p.add_argument("--samples", type=int, default=1000, help="Hessian samples per setup")
    p.add_argument("--batch-size", type=int, default=1000, help="Hessian batch size (default: one batch)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    bu.setup_process(args.threads)
    if args.quick:
        args.samples, args.batch_size, args.repeats = 64, 32, 2
    device = bu.resolve_device(args.device)
    env = bu.environment_info(device)
    results = {name: run_setup(name, args, device) for name in args.setups}
    header = [
        "setup",
        "batches",
        "d",
        "kept MiB",
        "matvec s rebuilt / kept",
        "speedup",
        "matmat 10 s rebuilt / kept",
        "speedup",
        "Lanczos top-10 s rebuilt / kept (HVPs)",
        "speedup",
        "rel. diff",
    ]
    table = []
    for name, r in results.items():
        cells = [name, r["batches"], r["d"], f"{r['kept_MiB']:.1f}"]
        for what in ("matvec", "matmat", "solve"):
            pair = f"{bu.fmt_stat(r[f'{what}_rebuilt_wall'])} / {bu.fmt_stat(r[f'{what}_kept_wall'])}"
            if what == "solve":
                pair += f" ({r['solve_hvps'][1]})"
            cells += [pair, f"{r[f'{what}_speedup']:.2f}× (CPU {r[f'{what}_speedup_cpu']:.2f}×)"]
        table.append([*cells, f"{max(r['rel_diff'], r['eig_rel_diff']):.1e}"])
    print(bu.markdown_table(header, table))
    payload = {"benchmark": "graph_reuse", "environment": bu.finish_environment(env), "args": vars(args)}
    payload["results"] = results
    bu.write_json(bu.output_path(args, "graph_reuse.json"), payload)
    return payload


if __name__ == "__main__":
    main()
