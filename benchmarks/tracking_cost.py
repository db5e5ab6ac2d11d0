"""Cost and measured accuracy of certified subspace tracking (``subspace_basis_tol``) against fixed schedules.

Along SGD, Dom-SGD and Bulk-SGD trajectories (k = 10) of the MNIST-5k MLP (784-200-200-10, Hessian set = the 5,000
training images) and the CIFAR-10 CNN (a seeded Hessian subset, a shorter run), every refresh policy tracks the top-k
eigenspace of the Hessian at the same parameters θ_t:

* ``paper``: cold scipy ``eigsh`` every step (the paper's call, ``which="LM"``, ``tol=0``), measured at a few steps
  (``--paper-points``) and extrapolated (its cost per step does not depend on the step);
* ``every step``: warm LOBPCG every step (the trainer's ``subspace_refresh_steps=1``), measured at
  ``--chain-points`` steps as a two-step chain (a warm refresh at t−1, then the counted one at t, warm from it);
* ``fixed 10`` / ``fixed 100``: warm LOBPCG every 10 / 100 steps. ``fixed 100`` runs along the whole trajectory;
  ``fixed 10`` refreshes only at the multiples of 10 just before each sampled step, warm-started from the driving
  basis there (its true warm start, 10 steps old, is of the same quality), which gives its HVPs per refresh;
* ``tol 0.02 / 0.05 / 0.1``: :class:`hf_subspace.tracking.BasisTracker` with that tolerance, max interval
  ``--max-interval``, its refreshes warm LOBPCG for k + 1 pairs (λ_{k+1} for the gap) at the tracker's solver
  tolerance, probes of one HVP. They run along the whole trajectory.

The trajectory is driven by the ``tol 0.05`` policy (``--drive``): its basis projects each minibatch SGD step
(dominant or bulk; ``sgd`` = unprojected), so its wall time per step is that of a real projected run (SGD step +
projection + refreshes + probes; the other policies and the measurements are timed apart and excluded). At
``--samples`` seeded random steps the *measured* error of every policy's basis in use, ‖P_used − P_ref(θ_t)‖₂, is
taken against a reference: the first by Lanczos, later ones by LOBPCG warm-started from the previous reference, both
for k + 1 pairs to ``--ref-tol`` (float32; its own Davis–Kahan bound is recorded with each sample). At the same
steps four single-vector probes of the driving basis measure the spread (χ²) of the probe estimate against the
measured error. Per policy: amortised HVPs per step (including the first basis at the switch), seconds per step,
error median / 95th percentile / max, and the goals of issue 12.

Losses: the final full training loss of each branch (driven by ``tol 0.05``). ``--loss-check`` adds the
quick-start digits MLP (64-32-32-10, 1,500 samples, switch at 300 of 1,500), where every branch is trained twice,
with a warm refresh every step and with ``tol 0.05``, and the final losses are compared (goal: within 2 %).

Run: ``python benchmarks/tracking_cost.py --threads 1`` (~45 min on one idle core), ``--quick`` (a minute).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench_utils as bu
import numpy as np
import torch
from tracking_report import goal_check, markdown_report, policy_table

from hf_subspace import HessianOperator, SubspaceBasis
from hf_subspace.eigensolvers import top_eigenpairs
from hf_subspace.tracking import BasisTracker, projector_distance, residual_bound

CIFAR_NPZ = bu.CIFAR_NPZ
TOLS = (0.02, 0.05, 0.1)
MODES = ("bulk", "dominant", "sgd")


# -- data and models -------------------------------------------------------------------------------------------
def load_model_data(name: str, n: int, seed: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """Model and standardised training data (per channel, like the recipes): ``mnist`` [n, 784] or ``cifar`` NCHW."""
    if name == "mnist":
        x, y = bu.load_mnist_data(n)
        x = (x - x.mean()) / x.std()
        return bu.make_mlp(784, [200, 200], seed=seed), x, y
    if name == "cifar":
        if not CIFAR_NPZ.is_file():
            raise SystemExit(f"CIFAR-10 file {CIFAR_NPZ} not found; set HF_SUBSPACE_CIFAR_NPZ")
        data = np.load(CIFAR_NPZ)
        x = torch.tensor(data["x"][:n], dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
        mean, std = x.mean(dim=(0, 2, 3), keepdim=True), x.std(dim=(0, 2, 3), keepdim=True)
        return bu.make_cnn(seed=seed), ((x - mean) / std).contiguous(), torch.tensor(data["y"][:n], dtype=torch.long)
    if name == "digits":
        x, y = bu.load_digits_data()
        x, y = x[:1500], y[:1500]
        return bu.make_mlp(64, [32, 32], seed=seed), x, y
    raise SystemExit(f"unknown model {name!r}")


def sgd_step(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    lr: float,
    batch: int,
    gen: torch.Generator,
    mode: str,
    basis: SubspaceBasis | None,
) -> None:
    """One minibatch SGD step; the update projected onto (dominant) or out of (bulk) span(basis)."""
    idx = torch.randint(0, len(y), (batch,), generator=gen)
    model.train()
    model.zero_grad(set_to_none=True)
    model(pixel_values=x[idx], labels=y[idx]).loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        grads = [p.grad for p in params]
        if mode == "dominant" and basis is not None:
            basis.project_dominant_(grads)
        elif mode == "bulk" and basis is not None:
            basis.project_bulk_(grads)
        torch._foreach_add_(params, grads, alpha=-lr)
    model.zero_grad(set_to_none=True)


# -- policies --------------------------------------------------------------------------------------------------
@dataclass
class Policy:
    """A refresh policy that keeps its own basis along the shared trajectory."""

    name: str
    op: HessianOperator
    k: int
    tracker: BasisTracker | None = None
    interval: int | None = None
    solver_tol: float = 1e-3
    basis: SubspaceBasis | None = None
    warm: torch.Tensor | None = None
    hvps: int = 0
    refresh_hvps: list[int] = field(default_factory=list)
    cpu_s: float = 0.0
    wall_s: float = 0.0
    last_refresh: int = 0
    refresh_steps: list[int] = field(default_factory=list)
    probe_steps: list[int] = field(default_factory=list)
    intervals: list[int] = field(default_factory=list)

    def start(self, t: int, first: Any) -> None:
        """The first basis at the switch (a shared cold Lanczos solve for k + 1 pairs; its HVPs count for all)."""
        self.hvps += first.num_matvecs
        self.refresh_hvps.append(first.num_matvecs)
        self.basis = SubspaceBasis(first.eigenvectors[:, : self.k], first.eigenvalues[: self.k])
        self.warm = first.eigenvectors if self.tracker is not None else first.eigenvectors[:, : self.k]
        self.last_refresh = t
        self.refresh_steps.append(t)
        if self.tracker is not None:
            self.tracker.observe_refresh(
                t, None, self.basis, first.residuals[: self.k], float(first.eigenvalues[self.k])
            )

    def refresh(self, t: int) -> None:
        num = self.k + 1 if self.tracker is not None else self.k
        tol = self.tracker.solver_tol(self.solver_tol) if self.tracker is not None else self.solver_tol
        with bu.quiet_warnings():
            res = top_eigenpairs(self.op, num, method="lobpcg", init=self.warm, tol=tol, seed=t)
        self.hvps += res.num_matvecs
        self.refresh_hvps.append(res.num_matvecs)
        new = SubspaceBasis(res.eigenvectors[:, : self.k], res.eigenvalues[: self.k])
        if self.tracker is not None:
            gap = getattr(res, "eigengap", None)
            nxt = float(res.eigenvalues[self.k]) if res.eigenvalues.numel() > self.k else None
            if nxt is None and gap is not None:
                nxt = float(res.eigenvalues[self.k - 1]) - float(gap)
            self.tracker.observe_refresh(t, self.basis, new, res.residuals[: self.k], nxt)
            self.intervals.append(self.tracker.interval)
        self.basis, self.warm, self.last_refresh = new, res.eigenvectors, t
        self.refresh_steps.append(t)

    def step(self, t: int) -> None:
        """Whatever the policy does before the update at step t (timed)."""
        w0, c0 = time.perf_counter(), time.process_time()
        if self.tracker is not None:
            tr = self.tracker
            if tr.refresh_due(t):
                self.refresh(t)
            elif tr.probe_due(t):
                assert self.basis is not None
                block = tr.probe_block(self.basis, t)
                tr.observe_probe(t, self.basis, block, self.op.matmat(block))
                self.hvps += block.shape[1]
                self.probe_steps.append(t)
                if tr.refresh_due(t):
                    self.refresh(t)
        elif self.interval is not None and t - self.last_refresh >= self.interval:
            self.refresh(t)
        self.cpu_s += time.process_time() - c0
        self.wall_s += time.perf_counter() - w0


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def error_stats(errors: list[float], tol: float | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "n": len(errors),
        "median": percentile(errors, 50),
        "p95": percentile(errors, 95),
        "max": max(errors) if errors else None,
    }
    if tol is not None and errors:
        out["fraction_within_tol"] = float(np.mean([e <= tol for e in errors]))
        out["fraction_within_2tol"] = float(np.mean([e <= 2 * tol for e in errors]))
    return out


# -- one trajectory --------------------------------------------------------------------------------------------
def run_trajectory(model_name: str, mode: str, cfg: argparse.Namespace) -> dict[str, Any]:
    """One (model, mode): the driven trajectory, every policy along it, the sampled measurements."""
    mc = cfg.models[model_name]
    model, x, y = load_model_data(model_name, mc["train"], cfg.seed)
    hess_idx = torch.arange(mc["hessian"])  # the first N_H training samples (all of them for MNIST-5k)
    batches = bu.make_batches(x[hess_idx], y[hess_idx], mc["hessian_batch"])
    gen = torch.Generator().manual_seed(cfg.seed)
    switch_loss = bu.sgd_steps(model, x, y, mc["switch"], mc["lr"], mc["batch"], gen)
    op = HessianOperator(model, batches)
    k = cfg.k
    steps = mc["steps"] if mode != "sgd" else min(mc["steps"], cfg.sgd_steps)
    print(
        f"\n== {model_name} {mode}: d={op.dim} Hessian samples={op.num_samples} switch={mc['switch']} "
        f"post-switch steps={steps} load={os.getloadavg()[0]:.2f}",
        flush=True,
    )

    # First basis at the switch (shared by every policy): cold Lanczos, k + 1 pairs.
    with bu.quiet_warnings():
        first = top_eigenpairs(op, k + 1, method="lanczos", tol=1e-3, seed=cfg.seed)
    policies: dict[str, Policy] = {}
    for tol in cfg.tols:
        tracker = BasisTracker(tol, cfg.max_interval, seed=cfg.seed)
        policies[f"tol {tol:g}"] = Policy(f"tol {tol:g}", op, k, tracker=tracker)
    policies["fixed 100"] = Policy("fixed 100", op, k, interval=100)
    for p in policies.values():
        p.start(0, first)
    driver = policies[cfg.drive]

    rng = np.random.default_rng(cfg.seed + 1)
    n_samples = min(cfg.samples if model_name != "cifar" else cfg.cifar_samples, steps - 1)
    sampled = sorted(int(s) for s in rng.choice(np.arange(1, steps), size=n_samples, replace=False))
    sampled_set = set(sampled)
    chain = set(sampled[:: max(1, len(sampled) // max(1, cfg.chain_points))][: cfg.chain_points])
    paper = set(sampled[:: max(1, len(sampled) // max(1, cfg.paper_points))][: cfg.paper_points])
    every10 = max(1, len(sampled) // max(1, cfg.fixed10_points))
    fixed10_anchor = {10 * (t // 10): t for t in sampled[::every10][: cfg.fixed10_points]}
    records: list[dict[str, Any]] = []
    fixed10: dict[str, Any] = {"hvps": [], "cpu_s": [], "basis": None, "anchor": None}
    chain_stats: dict[str, list[float]] = {"hvps": [], "cpu_s": [], "wall_s": [], "error": []}
    paper_stats: dict[str, list[float]] = {"hvps": [], "cpu_s": [], "wall_s": [], "error": []}
    ref_prev: torch.Tensor | None = None
    primed: torch.Tensor | None = None
    step_cpu, step_wall = [], []
    t_start = time.perf_counter()

    for t in range(steps):
        w0, c0 = time.perf_counter(), time.process_time()
        driver.step(t)
        c_drive, w_drive = time.process_time() - c0, time.perf_counter() - w0
        for p in policies.values():
            if p is not driver:
                p.step(t)
        if t in fixed10_anchor and t > 0:  # fixed 10: its refresh at this multiple of 10, warm from the driver
            c1 = time.process_time()
            with bu.quiet_warnings():
                res = top_eigenpairs(op, k, method="lobpcg", init=driver.basis.vectors, tol=1e-3, seed=t)
            fixed10["hvps"].append(res.num_matvecs)
            fixed10["cpu_s"].append(time.process_time() - c1)
            fixed10["basis"], fixed10["anchor"] = SubspaceBasis(res.eigenvectors), t
        if t + 1 in chain and t > 0:  # every step: prime the chain at t (not counted)
            with bu.quiet_warnings():
                primed = top_eigenpairs(
                    op, k, method="lobpcg", init=driver.basis.vectors, tol=1e-3, seed=t
                ).eigenvectors
        if t in sampled_set:
            rec = measure(
                t, op, k, cfg, driver, policies, fixed10, ref_prev, primed if t in chain else None, t in paper
            )
            ref_prev = rec.pop("_ref_vectors")
            for key, stats in (("every_step", chain_stats), ("paper", paper_stats)):
                if key in rec:
                    for name in stats:
                        stats[name].append(rec[key][name])
            records.append(rec)
            line = "  ".join(f"{n}={e:.3f}" for n, e in rec["errors"].items())
            print(
                f"t={t:4d} λk={rec['ref_eigenvalues'][k - 1]:.4g} λk+1={rec['ref_eigenvalues'][k]:.4g} {line} "
                f"est={rec['driver_estimate']:.3f} hvps={driver.hvps} load={os.getloadavg()[0]:.1f}",
                flush=True,
            )
        # the driven update
        w1, c1 = time.perf_counter(), time.process_time()
        sgd_step(model, x, y, mc["lr"], mc["batch"], gen, mode if mode != "sgd" else "none", driver.basis)
        step_cpu.append(c_drive + time.process_time() - c1)
        step_wall.append(w_drive + time.perf_counter() - w1)

    final_loss = op.loss()
    n_steps = steps
    summary: dict[str, Any] = {}
    for name, p in policies.items():
        errs = [r["errors"][name] for r in records if name in r["errors"]]
        tol = p.tracker.tol if p.tracker is not None else None
        summary[name] = {
            "hvps_per_step": p.hvps / n_steps,
            "cpu_s_per_step": p.cpu_s / n_steps,
            "wall_s_per_step": p.wall_s / n_steps,
            "refreshes": len(p.refresh_steps),
            "probes": len(p.probe_steps),
            "refresh_hvps_median": float(np.median(p.refresh_hvps[1:])) if len(p.refresh_hvps) > 1 else None,
            "probe_refreshes": p.tracker.num_probe_refreshes if p.tracker is not None else None,
            "error": error_stats(errs, tol),
        }
    first_per_step = first.num_matvecs / n_steps
    if fixed10["hvps"]:
        per_refresh = float(np.mean(fixed10["hvps"]))
        summary["fixed 10"] = {
            "hvps_per_step": per_refresh / 10 + first_per_step,
            "cpu_s_per_step": float(np.mean(fixed10["cpu_s"])) / 10,
            "refresh_hvps_median": float(np.median(fixed10["hvps"])),
            "error": error_stats([r["errors"]["fixed 10"] for r in records if "fixed 10" in r["errors"]]),
        }
    for key, stats in (("every step", chain_stats), ("paper", paper_stats)):
        if stats["hvps"]:
            summary[key] = {
                "hvps_per_step": float(np.mean(stats["hvps"])),
                "cpu_s_per_step": float(np.mean(stats["cpu_s"])),
                "wall_s_per_step": float(np.mean(stats["wall_s"])),
                "error": error_stats(stats["error"]),
                "measured_steps": len(stats["hvps"]),
            }
    probe_ratios = [q for r in records for q in r["probe_ratio"] if math.isfinite(q)]
    result = {
        "model": model_name,
        "mode": mode,
        "d": op.dim,
        "hessian_samples": op.num_samples,
        "switch": mc["switch"],
        "steps": steps,
        "lr": mc["lr"],
        "loss_at_switch_minibatch": switch_loss,
        "final_loss": final_loss,
        "drive": cfg.drive,
        "driver_step_cpu_s": float(np.mean(step_cpu)),
        "driver_step_wall_s": float(np.mean(step_wall)),
        "first_basis_hvps": first.num_matvecs,
        "summary": summary,
        "driver_refresh_steps": driver.refresh_steps,
        "driver_probe_steps": driver.probe_steps,
        "driver_intervals": driver.intervals,
        "probe_ratio": {
            "n": len(probe_ratios),
            "quantiles": {str(q): percentile(probe_ratios, q) for q in (5, 10, 25, 50, 75, 90)},
        },
        "records": records,
        "seconds": time.perf_counter() - t_start,
    }
    print_summary(result)
    return result


def measure(
    t: int,
    op: HessianOperator,
    k: int,
    cfg: argparse.Namespace,
    driver: Policy,
    policies: dict[str, Policy],
    fixed10: dict[str, Any],
    ref_prev: torch.Tensor | None,
    primed: torch.Tensor | None,
    paper: bool,
) -> dict[str, Any]:
    """Reference at θ_t, every policy's measured error, probe spread, and the every-step / paper solves at t."""
    with bu.quiet_warnings():
        if ref_prev is None:
            ref = top_eigenpairs(op, k + 1, method="lanczos", tol=cfg.ref_tol, max_iters=400, seed=10_000 + t)
        else:
            ref = top_eigenpairs(
                op, k + 1, method="lobpcg", init=ref_prev, tol=cfg.ref_tol, max_iters=30, seed=10_000 + t
            )
    ref_basis = SubspaceBasis(ref.eigenvectors[:, :k])
    rec: dict[str, Any] = {
        "step": t,
        "ref_eigenvalues": ref.eigenvalues.tolist(),
        "ref_hvps": ref.num_matvecs,
        "ref_converged": bool(ref.converged),
        "ref_bound": residual_bound(ref.residuals[:k], ref.eigenvalues[:k], float(ref.eigenvalues[k])),
        "_ref_vectors": ref.eigenvectors,
        "errors": {name: projector_distance(p.basis, ref_basis) for name, p in policies.items()},
        "ages": {name: t - p.last_refresh for name, p in policies.items()},
        "driver_estimate": driver.tracker.error_estimate(t) if driver.tracker is not None else math.nan,
        "driver_predicted": driver.tracker.predicted_error(t) if driver.tracker is not None else math.nan,
    }
    if fixed10["basis"] is not None and fixed10["anchor"] == 10 * (t // 10):
        rec["errors"]["fixed 10"] = projector_distance(fixed10["basis"], ref_basis)
    # χ² spread of single-vector probes of the driving basis (4 in one pass, not counted in any policy)
    rec["probe_ratio"] = []
    tr = driver.tracker
    if tr is not None and tr.weights is not None and cfg.probe_spread > 0:
        saved = (tr.probe_vectors, tr.force_refresh, tr.last_estimate, tr.last_estimate_step, tr.num_probes)
        tr.probe_vectors = cfg.probe_spread
        block = tr.probe_block(driver.basis, 777_777 + t)
        hu = op.matmat(block)
        vecs = driver.basis.vectors
        r = hu - vecs @ (vecs.T @ hu)
        (tr.probe_vectors, tr.force_refresh, tr.last_estimate, tr.last_estimate_step, tr.num_probes) = saved
        err = rec["errors"][cfg.drive]
        rec["probe_single_estimates"] = r.norm(dim=0).tolist()
        rec["probe_ratio"] = [e / err if err > 0 else math.inf for e in rec["probe_single_estimates"]]
    if primed is not None:
        w0, c0 = time.perf_counter(), time.process_time()
        with bu.quiet_warnings():
            res = top_eigenpairs(op, k, method="lobpcg", init=primed, tol=1e-3, seed=t)
        rec["every_step"] = {
            "hvps": res.num_matvecs,
            "cpu_s": time.process_time() - c0,
            "wall_s": time.perf_counter() - w0,
            "error": projector_distance(res.eigenvectors, ref_basis),
        }
    if paper:
        from refresh_cost import eigsh_paper_call

        v0 = torch.randn(op.dim, generator=torch.Generator().manual_seed(t)).numpy().astype(np.float32)
        w0, c0 = time.perf_counter(), time.process_time()
        with bu.quiet_warnings():
            solve = eigsh_paper_call(op, k, v0)
        rec["paper"] = {
            "hvps": solve.hvps,
            "cpu_s": time.process_time() - c0,
            "wall_s": time.perf_counter() - w0,
            "error": projector_distance(solve.vectors.float(), ref_basis),
        }
    return rec


def print_summary(result: dict[str, Any]) -> None:
    """One trajectory's settings line and :func:`policy_table`."""
    print(
        f"\n{result['model']} {result['mode']}: d={result['d']}, Hessian samples={result['hessian_samples']}, "
        f"{result['steps']} post-switch steps driven by {result['drive']}: {result['driver_step_cpu_s']:.3f} s/step "
        f"CPU ({result['driver_step_wall_s']:.3f} wall), final loss {result['final_loss']:.5g}"
    )
    print(policy_table(result["summary"]), flush=True)


# -- loss check on digits (every step vs tol 0.05, whole branches) ---------------------------------------------
def loss_check(cfg: argparse.Namespace) -> dict[str, Any]:
    """Quick-start digits MLP: each branch trained with a warm refresh every step and with ``tol 0.05``."""
    out: dict[str, Any] = {}
    switch, total, lr = cfg.digits_switch, cfg.digits_steps, 0.05
    for mode in ("dominant", "bulk", "sgd"):
        for policy in ("every step", "tol 0.05"):
            model, x, y = load_model_data("digits", 1500, cfg.seed)
            gen = torch.Generator().manual_seed(cfg.seed)
            bu.sgd_steps(model, x, y, switch, lr, 50, gen)
            op = HessianOperator(model, bu.make_batches(x, y, 500))
            with bu.quiet_warnings():
                first = top_eigenpairs(op, cfg.k + 1, method="lanczos", tol=1e-3, seed=cfg.seed)
            if policy == "every step":
                p = Policy(policy, op, cfg.k, interval=1)
            else:
                p = Policy(policy, op, cfg.k, tracker=BasisTracker(0.05, cfg.max_interval, seed=cfg.seed))
            p.start(0, first)
            c0 = time.process_time()
            for t in range(total - switch):
                if mode != "sgd" or policy == "tol 0.05":
                    p.step(t)
                sgd_step(model, x, y, lr, 50, gen, mode if mode != "sgd" else "none", p.basis)
            out[f"{mode} / {policy}"] = {
                "final_loss": op.loss(),
                "hvps_per_step": p.hvps / (total - switch),
                "refreshes": len(p.refresh_steps),
                "cpu_s": time.process_time() - c0,
            }
            print(
                f"digits {mode:8s} {policy:10s}: final loss {out[f'{mode} / {policy}']['final_loss']:.5g}", flush=True
            )
    for mode in ("dominant", "bulk", "sgd"):
        a, b = out[f"{mode} / every step"]["final_loss"], out[f"{mode} / tol 0.05"]["final_loss"]
        out[f"{mode} ratio"] = b / a
    return out


# -- main ------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bu.add_common_args(p, "tracking_cost.json")
    p.add_argument(
        "--runs",
        nargs="*",
        default=["mnist:bulk", "mnist:dominant", "cifar:bulk", "cifar:dominant", "mnist:sgd", "cifar:sgd"],
        help="model:mode pairs, in order",
    )
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--tols", type=float, nargs="+", default=list(TOLS))
    p.add_argument("--drive", default="tol 0.05", help="the policy whose basis drives the trajectory")
    p.add_argument("--max-interval", type=int, default=200, help="subspace_refresh_steps of the tol policies")
    p.add_argument("--samples", type=int, default=50, help="sampled steps with a reference (per trajectory)")
    p.add_argument("--chain-points", type=int, default=5, help="sampled steps that measure refresh-every-step")
    p.add_argument("--paper-points", type=int, default=2, help="sampled steps that measure cold eigsh")
    p.add_argument("--probe-spread", type=int, default=4, help="single-vector probes per sample (χ² spread)")
    p.add_argument("--ref-tol", type=float, default=3e-4, help="relative residual tolerance of the reference")
    p.add_argument("--mnist-steps", type=int, default=1000)
    p.add_argument("--mnist-switch", type=int, default=1000)
    p.add_argument("--mnist-hessian", type=int, default=5000, help="Hessian set of the MNIST runs (first N images)")
    p.add_argument("--cifar-steps", type=int, default=200)
    p.add_argument("--sgd-steps", type=int, default=300, help="post-switch steps of the sgd runs (no projection)")
    p.add_argument("--fixed10-points", type=int, default=15, help="sampled steps that measure fixed 10")
    p.add_argument("--cifar-samples", type=int, default=25, help="sampled steps of the CIFAR-10 runs")
    p.add_argument("--cifar-switch", type=int, default=500)
    p.add_argument("--cifar-hessian", type=int, default=500, help="Hessian subset of the CIFAR-10 run")
    p.add_argument("--loss-check", action="store_true", help="also train the digits branches twice (every step / tol)")
    p.add_argument("--loss-check-after", type=int, default=2, help="run the loss check after this many runs")
    p.add_argument("--digits-switch", type=int, default=300)
    p.add_argument("--digits-steps", type=int, default=1500)
    args = p.parse_args(argv)
    args.models = {
        "mnist": {
            "train": 5000,
            "hessian": args.mnist_hessian,
            "hessian_batch": 1000,
            "lr": 0.01,
            "batch": 50,
            "switch": args.mnist_switch,
            "steps": args.mnist_steps,
        },
        "cifar": {
            "train": 5000,
            "hessian": args.cifar_hessian,
            "hessian_batch": 250,
            "lr": 0.01,
            "batch": 50,
            "switch": args.cifar_switch,
            "steps": args.cifar_steps,
        },
    }
    if args.quick:
        for mc in args.models.values():
            mc.update(train=600, hessian=300, switch=50, steps=40)
        args.samples, args.chain_points, args.paper_points, args.cifar_samples = 8, 2, 1, 6
        args.max_interval, args.digits_switch, args.digits_steps = 20, 30, 80
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    if argv and argv[0] == "--summarize":
        import json

        print(markdown_report(json.loads(Path(argv[1]).read_text())))
        return {}
    args = parse_args(argv)
    bu.setup_process(args.threads)
    env = bu.environment_info(torch.device("cpu"))
    out_path = bu.output_path(args, "tracking_cost.json")
    result: dict[str, Any] = {
        "benchmark": "tracking_cost",
        "environment": env,
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "runs": {},
    }
    for position, run in enumerate([*args.runs, None]):
        if args.loss_check and position == min(args.loss_check_after, len(args.runs)):
            result["loss_check"] = loss_check(args)
            bu.write_json(out_path, {**result, "environment": bu.finish_environment(dict(env))})
        if run is None:
            break
        model_name, mode = run.split(":")
        try:
            result["runs"][run] = run_trajectory(model_name, mode, args)
        except Exception as err:  # keep the other runs' results; the JSON records what failed
            result.setdefault("failed", {})[run] = f"{type(err).__name__}: {err}"
            print(f"run {run} failed: {err}", flush=True)
            continue
        result["goals"] = goal_check(result)
        bu.write_json(out_path, {**result, "environment": bu.finish_environment(dict(env))})
    result["goals"] = goal_check(result)
    for line in result["goals"]["lines"]:
        print(line)
    bu.write_json(out_path, {**result, "environment": bu.finish_environment(env)})
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
