"""Where the time of a warm refresh and of a projected training step goes (cProfile), to find library hot spots.

Two measurements on the paper's MLP (784-200-200-10) with MNIST (digits with ``--data digits``):

1. **Warm refresh**: ``top_eigenpairs(op, k=10, method="lobpcg", init=previous basis)`` one SGD step after a
   converged basis, on a Hessian dataset of ``--hessian-samples`` (the trainer's default 1,000, batches of 250).
   Split: the Hessian passes (``HessianOperator.matmat``) vs everything else in the solver (dense linear algebra
   on ``[d, ≤ 4m]`` blocks, orthonormalisation, checks).
2. **Training steps**: ``SubspaceTrainer`` (dominant, refresh every ``--refresh`` steps) for ``--steps`` steps.
   Split: refreshes, per-step work of the subspace callback outside refreshes (projection of the update, χ_k of
   the minibatch gradient and of the update, parameter copies), and the rest of the Trainer step.

Prints the top functions by own time and the splits; writes a JSON. Run alone: a busy machine inflates everything.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from typing import Any

import bench_utils as bu
import torch

from hf_subspace import HessianOperator
from hf_subspace.eigensolvers import top_eigenpairs


def _cum(stats: pstats.Stats, suffix: str, name: str) -> float:
    """Cumulative seconds of the function ``name`` defined in a file ending with ``suffix``."""
    total = 0.0
    for (filename, _line, func), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if func == name and filename.endswith(suffix):
            total += ct
    return total


def _top(stats: pstats.Stats, n: int) -> list[dict[str, Any]]:
    rows = []
    for (filename, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append(
            {
                "function": f"{filename.split('/site-packages/')[-1].split('/work/main/')[-1]}:{line}({func})",
                "calls": nc,
                "own_s": tt,
                "cum_s": ct,
            }
        )
    return sorted(rows, key=lambda r: -r["own_s"])[:n]


def profile_refresh(args: argparse.Namespace) -> dict[str, Any]:
    """cProfile of warm LOBPCG refreshes along a few SGD steps."""
    x, y = bu.load_image_data(args.data, None)
    model = bu.make_mlp(x.shape[1], args.hidden, seed=args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    bu.sgd_steps(model, x, y, args.pretrain_steps, 0.05, 50, gen)
    op = HessianOperator(model, bu.make_batches(x[: args.hessian_samples], y[: args.hessian_samples], 250))
    with bu.quiet_warnings():
        basis = top_eigenpairs(op, 10, method="lanczos").eigenvectors
    prof = cProfile.Profile()
    results = []
    for _ in range(args.refreshes):
        bu.sgd_steps(model, x, y, 1, 0.05, 50, gen)
        start = time.perf_counter()
        prof.enable()
        with bu.quiet_warnings():
            res = top_eigenpairs(op, 10, method="lobpcg", init=basis)
        prof.disable()
        results.append({"hvps": res.num_matvecs, "passes": res.num_calls, "seconds": time.perf_counter() - start})
        basis = res.eigenvectors
    stats = pstats.Stats(prof)
    total = _cum(stats, "eigensolvers/__init__.py", "top_eigenpairs")
    passes = _cum(stats, "hf_subspace/hessian.py", "matmat")
    return {
        "d": op.dim,
        "hessian_samples": op.num_samples,
        "refreshes": results,
        "total_s": total,
        "hessian_passes_s": passes,
        "solver_other_s": total - passes,
        "top": _top(stats, args.top),
    }


def profile_training(args: argparse.Namespace) -> dict[str, Any]:
    """cProfile of ``SubspaceTrainer`` steps (dominant, refresh every ``--refresh``)."""
    import trainer_overhead as to

    targs = to.parse_args(["--steps", str(args.steps), "--data", args.data, "--hidden", *map(str, args.hidden)])
    data = bu.load_image_data(args.data, None)
    config = {
        "name": "profile",
        "subspace": {
            "subspace_mode": "dominant",
            "subspace_refresh_steps": args.refresh,
            "subspace_alignment_steps": 0,
        },
    }
    prof = cProfile.Profile()
    prof.enable()
    res = to.run_training(config, data, targs, torch.device("cpu"), args.steps, args.hessian_samples)
    prof.disable()
    stats = pstats.Stats(prof)
    train = _cum(stats, "transformers/trainer.py", "_inner_training_loop")
    refresh = _cum(stats, "hf_subspace/callback.py", "_refresh")
    pre = _cum(stats, "hf_subspace/callback.py", "on_pre_optimizer_step")
    post = _cum(stats, "hf_subspace/callback.py", "on_optimizer_step")
    return {
        "steps": args.steps,
        "refresh_every": args.refresh,
        "train_loop_s": train,
        "refreshes_s": refresh,
        "callback_per_step_s": (pre + post - refresh) / args.steps,
        "rest_per_step_s": (train - pre - post) / args.steps,
        "dominant_fraction_s": _cum(stats, "hf_subspace/subspace.py", "dominant_fraction"),
        "coefficients_s": _cum(stats, "hf_subspace/subspace.py", "coefficients"),
        "expand_s": _cum(stats, "hf_subspace/subspace.py", "expand"),
        "norm_s": _cum(stats, "hf_subspace/subspace.py", "_norm"),
        "step_stats": to.step_stats(res["durations"], args.refresh),
        "top": _top(stats, args.top),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bu.add_common_args(p, "profile_hotspots.json")
    p.add_argument("--data", choices=["digits", "mnist"], default="mnist" if bu.MNIST_NPZ.is_file() else "digits")
    p.add_argument("--hidden", type=int, nargs="+", default=[200, 200])
    p.add_argument("--hessian-samples", type=int, default=1000)
    p.add_argument("--pretrain-steps", type=int, default=300)
    p.add_argument("--refreshes", type=int, default=3)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--refresh", type=int, default=100)
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args(argv)
    if args.quick:
        args.hessian_samples, args.pretrain_steps, args.refreshes, args.steps, args.refresh = 100, 5, 1, 4, 2
        args.hidden = [16, 16]
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    bu.setup_process(args.threads)
    env = bu.environment_info(torch.device("cpu"))
    refresh = profile_refresh(args)
    training = profile_training(args)
    result = {
        "benchmark": "profile_hotspots",
        "environment": bu.finish_environment(env),
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "refresh": refresh,
        "training": training,
    }
    print_tables(result)
    bu.write_json(bu.output_path(args, "profile_hotspots.json"), result)
    return result


def print_tables(result: dict[str, Any]) -> None:
    """The splits and the top functions by own time."""
    r, t = result["refresh"], result["training"]
    n = len(r["refreshes"])
    print(
        f"\nWarm LOBPCG refresh (d={r['d']:,}, {r['hessian_samples']} Hessian samples, {n} refreshes): "
        f"{r['total_s'] / n:.3f} s each = Hessian passes {r['hessian_passes_s'] / n:.3f} s + solver's own work "
        f"{r['solver_other_s'] / n:.3f} s ({r['solver_other_s'] / max(r['total_s'], 1e-12):.0%}); HVPs "
        f"{[x['hvps'] for x in r['refreshes']]}\n"
    )
    rows = [[x["function"], x["calls"], bu.fmt_num(x["own_s"]), bu.fmt_num(x["cum_s"])] for x in r["top"]]
    print(bu.markdown_table(["function", "calls", "own s", "cumulative s"], rows))
    print(
        f"\nSubspaceTrainer, dominant, refresh every {t['refresh_every']} ({t['steps']} steps): refreshes "
        f"{t['refreshes_s']:.2f} s in total; subspace callback outside refreshes {t['callback_per_step_s'] * 1e3:.2f} "
        f"ms/step (dominant_fraction {t['dominant_fraction_s']:.2f} s, of which _norm {t['norm_s']:.2f} s; "
        f"coefficients {t['coefficients_s']:.2f} s; expand {t['expand_s']:.2f} s); rest of the step "
        f"{t['rest_per_step_s'] * 1e3:.2f} ms/step\n"
    )
    rows = [[x["function"], x["calls"], bu.fmt_num(x["own_s"]), bu.fmt_num(x["cum_s"])] for x in t["top"]]
    print(bu.markdown_table(["function", "calls", "own s", "cumulative s"], rows))


if __name__ == "__main__":
    main(sys.argv[1:])
