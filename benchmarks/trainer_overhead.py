"""Step time of ``SubspaceTrainer`` (dominant / bulk, refresh every 1, 10, 100 steps) vs plain ``transformers.Trainer``.

Every configuration trains the same MLP (784-200-200-10 on MNIST-5k, or digits) from the same initialisation for
``--steps`` optimizer steps (``--steps-every-1`` for the refresh-every-step runs) with SGD, batch 50, no logging, saving or evaluation; a callback timestamps every
``on_step_end``. Reported per configuration (medians [min–max] over ``--repeats`` runs, configurations interleaved):

* mean step time over steps 2..S (steady state: the refreshes are included, the first step is not; it holds the
  switch's cold Lanczos solve for subspace runs and warm-up for all), and its ratio to plain ``Trainer``;
* mean step time over all S steps (amortised, first step included);
* median step time (a step without refresh);
* with refresh every R > 1: the extra seconds of a warm refresh step, the per-step overhead of the projection and
  per-step metrics (median non-refresh step − plain median step), and the refresh interval at which the steady step
  time would be 1.3 × plain with these two costs (``warm refresh / (0.3 · plain step − per-step overhead)``).

Diagnostics: the same dominant run (refresh every 100) with the full-batch alignment measurement
(``subspace_alignment_steps``: full-batch loss and gradient, χ_k, EMA, effective learning rates) every 10 and every
step; its cost per measurement = extra time / number of measurements. Besides, micro-timings of the pieces:
``HessianOperator.loss_and_gradient()``, ``SubspaceBasis.dominant_fraction`` and ``effective_learning_rates``.

With ``--extrapolate-steps N`` (``run_all.py`` uses 500): a Dom-SGD run on MNIST-5k with a refresh at every step (the
paper's protocol) measured for N steps, and the wall time of a 20,000-step run extrapolated from it (first step +
19,999 × steady-state step time); the same for ``subspace_solver="eigsh"`` (scipy ARPACK, cold, every step) from
``--extrapolate-eigsh-steps`` steps.

Run: ``python benchmarks/trainer_overhead.py`` (~10 min on 2 idle cores), ``--quick``, ``--device cuda``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from typing import Any

import bench_utils as bu
import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_subspace import SubspaceBasis
from hf_subspace.metrics import effective_learning_rates
from hf_subspace.trainer import SubspaceTrainer
from hf_subspace.training_args import SubspaceTrainingArguments

PAPER_STEPS = 20_000


class TensorDictDataset(torch.utils.data.Dataset):
    """``{"pixel_values": x[i], "labels": y[i]}`` items (collated by ``default_data_collator``)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.x[i], "labels": self.y[i]}


class StepTimer(TrainerCallback):
    """Wall-clock duration of every optimizer step (between consecutive ``on_step_end`` calls)."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.marks = [time.perf_counter()]

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if torch.cuda.is_available() and args.device.type == "cuda":
            torch.cuda.synchronize()
        self.marks.append(time.perf_counter())

    @property
    def durations(self) -> list[float]:
        return list(np.diff(self.marks))


def configurations(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Name and subspace settings of every configuration (``None`` settings: plain ``Trainer``)."""
    configs: list[dict[str, Any]] = [{"name": "plain Trainer", "subspace": None}]
    if not args.quick:
        configs.append(
            {"name": "SubspaceTrainer, mode none", "subspace": {"subspace_mode": "none", "subspace_alignment_steps": 0}}
        )
    for mode in args.modes:
        for every in args.refresh:
            configs.append(
                {
                    "name": f"{mode}, refresh every {every}",
                    "subspace": {
                        "subspace_mode": mode,
                        "subspace_refresh_steps": every,
                        "subspace_alignment_steps": 0,
                    },
                    "mode": mode,
                    "refresh": every,
                }
            )
    for every in args.alignment:
        configs.append(
            {
                "name": f"dominant, refresh every {args.diag_refresh}, alignment every {every}",
                "subspace": {
                    "subspace_mode": "dominant",
                    "subspace_refresh_steps": args.diag_refresh,
                    "subspace_alignment_steps": every,
                },
                "mode": "dominant",
                "refresh": args.diag_refresh,
                "alignment": every,
            }
        )
    return configs


def run_training(
    config: dict[str, Any],
    data: tuple[torch.Tensor, torch.Tensor],
    args: argparse.Namespace,
    device: torch.device,
    steps: int,
    hessian_samples: int,
    solver: str = "auto",
) -> dict[str, Any]:
    """Train one configuration from a fresh model; return step durations and the trainer's solver logs."""
    x, y = data
    model = bu.make_mlp(x.shape[1], args.hidden, seed=args.seed)
    common = {
        "output_dir": tempfile.mkdtemp(prefix="hfsub-bench-"),
        "max_steps": steps,
        "per_device_train_batch_size": args.batch_size,
        "learning_rate": args.lr,
        "optim": "sgd",
        "lr_scheduler_type": "constant",
        "weight_decay": 0.0,
        "logging_steps": max(steps, 1),
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "seed": args.seed,
        "use_cpu": device.type == "cpu",
    }
    timer = StepTimer()
    dataset = TensorDictDataset(x, y)
    if config["subspace"] is None:
        trainer: Trainer = Trainer(
            model=model, args=TrainingArguments(**common), train_dataset=dataset, callbacks=[timer]
        )
    else:
        targs = SubspaceTrainingArguments(
            **common,
            subspace_k=args.k,
            subspace_start_step=0,
            hessian_num_samples=hessian_samples,
            hessian_batch_size=args.hessian_batch_size,
            subspace_solver=solver,
            **config["subspace"],
        )
        trainer = SubspaceTrainer(model=model, args=targs, train_dataset=dataset, callbacks=[timer])
    with bu.quiet_warnings():
        out = trainer.train()
    durations = timer.durations
    solver_logs = [
        {k.split("/", 1)[1]: v for k, v in entry.items() if k.startswith("subspace/solver")}
        for entry in trainer.state.log_history
        if any(k.startswith("subspace/solver") for k in entry)
    ]
    return {
        "durations": durations,
        "train_runtime": float(out.metrics.get("train_runtime", float("nan"))),
        "solver_logs": solver_logs,
        "trainer": trainer,
    }


def step_stats(durations: list[float], refresh: int | None = None) -> dict[str, float | None]:
    """Mean over steps 2..S, mean over all steps, median step, first step; with a refresh interval > 1 also the
    median step without refresh and the extra seconds of a warm refresh step (step indices 0, R, 2R, … refresh)."""
    d = np.asarray(durations)
    out: dict[str, float | None] = {
        "mean_steady_s": float(d[1:].mean()) if len(d) > 1 else float(d.mean()),
        "mean_all_s": float(d.mean()),
        "median_s": float(np.median(d)),
        "first_s": float(d[0]),
        "steps": len(d),
        "no_refresh_step_s": None,
        "warm_refresh_extra_s": None,
    }
    if refresh and refresh > 1 and len(d) > refresh:
        idx = np.arange(len(d))
        warm = d[(idx % refresh == 0) & (idx > 0)]
        quiet = d[(idx % refresh != 0)]
        out["no_refresh_step_s"] = float(np.median(quiet))
        out["warm_refresh_extra_s"] = float(np.median(warm) - np.median(quiet))
    return out


def micro_diagnostics(trainer: SubspaceTrainer, device: torch.device, repeats: int) -> dict[str, Any]:
    """Time the diagnostic pieces alone on a finished trainer's operator and basis."""
    op = trainer.hessian_operator
    basis: SubspaceBasis = trainer.subspace_state.basis
    grad_times, chi_times, lr_times = [], [], []
    for _ in range(repeats):
        bu.invalidate_gradient_cache(op.params)  # time a real pass, not the cache of the last product pass
        t = bu.timed(op.loss_and_gradient, device)
        grad_times.append(t.wall)
        grad = t.result[1]
        chi_times.append(bu.timed(lambda g=grad: basis.dominant_fraction(g), device).wall)
        delta = [torch.randn_like(p) for p in trainer.subspace_params]
        lr_times.append(bu.timed(lambda g=grad, dl=delta: effective_learning_rates(basis, dl, g), device).wall)
    return {
        "loss_and_gradient_s": bu.summarize(grad_times),
        "dominant_fraction_s": bu.summarize(chi_times),
        "effective_learning_rates_s": bu.summarize(lr_times),
        "hessian_samples": op.num_samples,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bu.add_common_args(p, "trainer_overhead.json")
    p.add_argument("--data", choices=["digits", "mnist"], default="mnist" if bu.MNIST_NPZ.is_file() else "digits")
    p.add_argument("--train-samples", type=int, default=None)
    p.add_argument("--hidden", type=int, nargs="+", default=[200, 200])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--steps-every-1", type=int, default=60, help="steps of the refresh-every-step runs")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--hessian-samples", type=int, default=1000, help="SubspaceTrainingArguments default: 1000")
    p.add_argument("--hessian-batch-size", type=int, default=250, help="SubspaceTrainingArguments default: 250")
    p.add_argument("--modes", nargs="+", default=["dominant", "bulk"], choices=["dominant", "bulk"])
    p.add_argument("--refresh", type=int, nargs="+", default=[1, 10, 100])
    p.add_argument("--alignment", type=int, nargs="+", default=[10, 1], help="alignment intervals to measure")
    p.add_argument("--diag-refresh", type=int, default=100, help="refresh interval of the diagnostics runs")
    p.add_argument("--extrapolate-steps", type=int, default=0, help="measured steps of the Dom-SGD run (0: skip)")
    p.add_argument("--extrapolate-eigsh-steps", type=int, default=None, help="default: min(50, extrapolate-steps)")
    p.add_argument("--extrapolate-hessian-samples", type=int, default=5000, help="Hessian dataset of that run")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.repeats, args.hidden = 6, 1, [16, 16]
        args.train_samples = args.train_samples or 200
        args.hessian_samples, args.hessian_batch_size = 100, 50
        args.refresh, args.alignment, args.diag_refresh = [1, 3], [2], 3
        args.modes = ["dominant"]
        args.extrapolate_steps = min(args.extrapolate_steps, 4)
        args.extrapolate_hessian_samples = 100
    if args.extrapolate_eigsh_steps is None:
        args.extrapolate_eigsh_steps = min(50 if not args.quick else 2, args.extrapolate_steps)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    bu.setup_process(args.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    device = bu.resolve_device(args.device)
    env = bu.environment_info(device)
    data = bu.load_image_data(args.data, args.train_samples)
    configs = configurations(args)
    print(
        f"trainer_overhead: {args.data} N={len(data[1])} steps={args.steps} repeats={args.repeats} device={device} "
        f"threads={torch.get_num_threads()} load={os.getloadavg()[0]:.2f}",
        flush=True,
    )
    runs: dict[str, list[dict[str, Any]]] = {c["name"]: [] for c in configs}
    micro: dict[str, Any] = {}
    for r in range(args.repeats):
        for config in configs:
            steps = min(args.steps, args.steps_every_1) if config.get("refresh") == 1 else args.steps
            res = run_training(config, data, args, device, steps, args.hessian_samples)
            stats = step_stats(res["durations"], config.get("refresh") if "alignment" not in config else None)
            runs[config["name"]].append({**stats, "train_runtime": res["train_runtime"], "solver": res["solver_logs"]})
            print(
                f"  [{r}] {config['name']:<48} steady {stats['mean_steady_s'] * 1e3:8.2f} ms  "
                f"median {stats['median_s'] * 1e3:7.2f} ms  first {stats['first_s']:.2f} s",
                flush=True,
            )
            if r == 0 and config.get("alignment") == min(args.alignment, default=0) and not micro:
                micro = micro_diagnostics(res["trainer"], device, max(3, args.repeats))

    summary = summarize(configs, runs, args)
    extrapolation = extrapolate(args, data, device) if args.extrapolate_steps > 0 else {}
    plain = summary["plain Trainer"]["mean_steady_s"]["median"]
    goal_name = f"dominant, refresh every {max(args.refresh)}"
    goals = {}
    if goal_name in summary:
        ratio = summary[goal_name]["mean_steady_s"]["median"] / plain
        goals["overhead_refresh_every_max"] = {"config": goal_name, "ratio": ratio, "target": 1.3, "met": ratio <= 1.3}
    result = {
        "benchmark": "trainer_overhead",
        "environment": bu.finish_environment(env),
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "summary": summary,
        "diagnostics_micro": micro,
        "extrapolation": extrapolation,
        "goals": goals,
        "runs": runs,
    }
    print_tables(result)
    bu.write_json(bu.output_path(args, "trainer_overhead.json"), result)
    return result


def summarize(
    configs: list[dict[str, Any]], runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace
) -> dict[str, Any]:
    """Per configuration: step-time statistics over repeats, ratio to plain Trainer, diagnostic cost."""
    plain_runs = runs["plain Trainer"]
    plain = float(np.median([r["mean_steady_s"] for r in plain_runs]))
    plain_median = float(np.median([r["median_s"] for r in plain_runs]))
    out: dict[str, Any] = {}
    for config in configs:
        rs = runs[config["name"]]
        entry: dict[str, Any] = {
            key: bu.summarize([r[key] for r in rs]) for key in ("mean_steady_s", "mean_all_s", "median_s", "first_s")
        }
        entry["ratio_steady"] = entry["mean_steady_s"]["median"] / plain
        entry["ratio_all"] = entry["mean_all_s"]["median"] / float(np.median([r["mean_all_s"] for r in plain_runs]))
        hvps = [s.get("solver_hvps") for r in rs for s in r["solver"] if s.get("solver_hvps") is not None]
        entry["solver_hvps_logged"] = bu.summarize(hvps)
        for key in ("no_refresh_step_s", "warm_refresh_extra_s"):
            entry[key] = bu.summarize([r[key] for r in rs if r.get(key) is not None])
        if entry["warm_refresh_extra_s"]["n"]:
            # Refresh interval at which the steady step time would be 1.3 × plain, with this per-step overhead.
            overhead = entry["no_refresh_step_s"]["median"] - plain_median
            budget = 0.3 * plain_median - overhead
            extra = entry["warm_refresh_extra_s"]["median"]
            entry["per_step_overhead_s"] = overhead
            entry["break_even_interval_1_3x"] = extra / budget if budget > 0 else None
        if "alignment" in config:
            base_name = f"{config['mode']}, refresh every {config['refresh']}"
            if base_name in runs:
                base = float(np.median([r["mean_steady_s"] for r in runs[base_name]]))
                per_step = entry["mean_steady_s"]["median"] - base
                entry["alignment_cost_per_measurement_s"] = per_step * config["alignment"]
        out[config["name"]] = entry
    return out


def extrapolate(
    args: argparse.Namespace, data: tuple[torch.Tensor, torch.Tensor], device: torch.device
) -> dict[str, Any]:
    """Wall time of a 20,000-step Dom-SGD run (refresh every step) extrapolated from measured steps."""
    out: dict[str, Any] = {"hessian_samples": args.extrapolate_hessian_samples, "paper_steps": PAPER_STEPS}
    for solver, steps in (("auto", args.extrapolate_steps), ("eigsh", args.extrapolate_eigsh_steps)):
        if steps <= 0:
            continue
        config = {
            "name": f"Dom-SGD, refresh every step, solver {solver}",
            "subspace": {"subspace_mode": "dominant", "subspace_refresh_steps": 1, "subspace_alignment_steps": 0},
        }
        res = run_training(config, data, args, device, steps, args.extrapolate_hessian_samples, solver=solver)
        stats = step_stats(res["durations"])
        total = stats["first_s"] + stats["mean_steady_s"] * (PAPER_STEPS - 1)
        label = "hf-subspace (Lanczos at the switch, warm LOBPCG after)" if solver == "auto" else "scipy eigsh LA, cold"
        out[solver] = {
            "label": label,
            "measured_steps": steps,
            **stats,
            "extrapolated_20k_s": total,
            "extrapolated_20k_h": total / 3600,
        }
        print(
            f"  extrapolation {label}: {steps} steps, {stats['mean_steady_s']:.3f} s/step → {total / 3600:.2f} h",
            flush=True,
        )
    return out


def _interval(entry: dict[str, Any]) -> str:
    if "per_step_overhead_s" not in entry:
        return "–"
    value = entry.get("break_even_interval_1_3x")
    return "never (per-step overhead > 30 %)" if value is None else f"≥ {value:,.0f} steps"


def print_tables(result: dict[str, Any]) -> None:
    """Markdown tables: step times, diagnostics, extrapolation, goal."""
    rows = []
    for name, e in result["summary"].items():
        rows.append(
            [
                name,
                bu.fmt_stat({k: v * 1e3 if v is not None else None for k, v in e["mean_steady_s"].items() if k != "n"}),
                f"{e['ratio_steady']:.2f}×",
                bu.fmt_stat({k: v * 1e3 if v is not None else None for k, v in e["mean_all_s"].items() if k != "n"}),
                bu.fmt_num(e["median_s"]["median"] * 1e3),
                bu.fmt_num(e["first_s"]["median"]),
                bu.fmt_stat(e["solver_hvps_logged"]),
                bu.fmt_num(e["warm_refresh_extra_s"]["median"]) if e["warm_refresh_extra_s"]["n"] else "–",
                bu.fmt_num(e["per_step_overhead_s"] * 1e3) if "per_step_overhead_s" in e else "–",
                _interval(e),
                bu.fmt_num(e.get("alignment_cost_per_measurement_s")),
            ]
        )
    cfg = result["config"]
    print(
        f"\nTrainer step time ({cfg['data']}, MLP {cfg['hidden']}, batch {cfg['batch_size']}, {cfg['steps']} steps, "
        f"Hessian samples {cfg['hessian_samples']}); medians [min–max] over {cfg['repeats']} runs\n"
    )
    headers = [
        "configuration",
        "steady ms/step",
        "× plain",
        "all-steps ms/step",
        "median ms",
        "first step s",
        "HVPs/refresh (last logged)",
        "warm refresh s",
        "per-step overhead ms",
        "refresh interval for 1.3×",
        "alignment s/measurement",
    ]
    print(bu.markdown_table(headers, rows))
    micro = result["diagnostics_micro"]
    if micro:
        print(
            f"\ndiagnostic pieces (Hessian samples {micro['hessian_samples']}): loss_and_gradient "
            f"{bu.fmt_stat(micro['loss_and_gradient_s'])} s, dominant_fraction {bu.fmt_stat(micro['dominant_fraction_s'])} s, "
            f"effective_learning_rates {bu.fmt_stat(micro['effective_learning_rates_s'])} s"
        )
    for key in ("auto", "eigsh"):
        e = result["extrapolation"].get(key)
        if e:
            print(
                f"20,000-step Dom-SGD ({result['extrapolation']['hessian_samples']} Hessian samples), {e['label']}: "
                f"{e['mean_steady_s']:.3f} s/step over {e['measured_steps']} steps → {e['extrapolated_20k_h']:.2f} h"
            )
    for g in result["goals"].values():
        print(
            f"goal overhead ({g['config']}): {g['ratio']:.2f}× vs ≤ {g['target']}× → {'MET' if g['met'] else 'MISSED'}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
