"""The tables and goal checks of ``tracking_cost.py``'s result JSON (``python benchmarks/tracking_cost.py
--summarize FILE`` prints them from a stored result)."""

from __future__ import annotations

from typing import Any

import bench_utils as bu

__all__ = ["goal_check", "markdown_report", "policy_table"]


def policy_table(summary: dict[str, Any]) -> str:
    """Markdown table of one trajectory's policies (``run["summary"]``), with ratios to the paper's cost."""
    paper = summary.get("paper", {}).get("hvps_per_step")
    order = ["paper", "every step", "fixed 10", "fixed 100"] + [n for n in summary if n.startswith("tol ")]
    rows = []
    for name in [n for n in order if n in summary]:
        st, e = summary[name], summary[name]["error"]
        rows.append(
            [
                name,
                bu.fmt_num(st["hvps_per_step"]),
                bu.fmt_num(st["hvps_per_step"] / paper) if paper else "–",
                bu.fmt_num(st.get("cpu_s_per_step")),
                str(st.get("refreshes", "–")),
                str(st.get("probes", "–")),
                str(e["n"]),
                bu.fmt_num(e["median"]),
                bu.fmt_num(e["p95"]),
                bu.fmt_num(e["max"]),
                f"{e['fraction_within_tol']:.0%}" if "fraction_within_tol" in e else "–",
            ]
        )
    headers = ["policy", "HVPs/step", "× paper", "CPU s/step", "refreshes", "probes", "n", "median", "p95", "max"]
    return bu.markdown_table([*headers, "≤ tol"], rows)


def markdown_report(result: dict[str, Any]) -> str:
    """All tables of a result JSON as markdown (``--summarize FILE``)."""
    out = []
    for run, r in result.get("runs", {}).items():
        pr = r["probe_ratio"]["quantiles"]
        out.append(
            f"**{run}** (d = {r['d']:,}, Hessian set {r['hessian_samples']:,}, switch at {r['switch']}, "
            f"{r['steps']} post-switch steps driven by {r['drive']}: {r['driver_step_cpu_s']:.3f} s/step CPU, "
            f"{r['driver_step_wall_s']:.3f} s wall; final loss {r['final_loss']:.5g}; one-vector probe / measured "
            f"error: 5th pct {bu.fmt_num(pr.get('5'))}, median {bu.fmt_num(pr.get('50'))}, "
            f"90th {bu.fmt_num(pr.get('90'))})\n"
        )
        out.append(policy_table(r["summary"]) + "\n")
    lc = result.get("loss_check")
    if lc:
        rows = []
        for mode in ("dominant", "bulk", "sgd"):
            a, b = lc[f"{mode} / every step"], lc[f"{mode} / tol 0.05"]
            rows.append(
                [
                    mode,
                    f"{a['final_loss']:.5g}",
                    f"{b['final_loss']:.5g}",
                    f"{lc[f'{mode} ratio']:.4f}",
                    bu.fmt_num(a["hvps_per_step"]),
                    bu.fmt_num(b["hvps_per_step"]),
                ]
            )
        headers = ["branch", "final loss, every step", "final loss, tol 0.05", "ratio", "HVPs/step", "HVPs/step tol"]
        out.append(bu.markdown_table(headers, rows) + "\n")
    return "\n".join(out)


def goal_check(result: dict[str, Any]) -> dict[str, Any]:
    """Issue 12's goals for ``tol 0.05`` per run: error quantiles, HVPs vs paper, s/step; loss ratios."""
    lines, checks = [], {}
    for run, r in result["runs"].items():
        s = r["summary"].get("tol 0.05")
        if s is None:
            continue
        e = s["error"]
        paper = r["summary"].get("paper", {}).get("hvps_per_step")
        ratio = s["hvps_per_step"] / paper if paper else None
        c = {
            "error_95_within_0.05": (e.get("fraction_within_tol") or 0) >= 0.95,
            "error_max_within_0.1": e["max"] is not None and e["max"] <= 0.1,
            "hvp_ratio_vs_paper": ratio,
            "hvp_ratio_met": ratio is not None and ratio <= 0.1,
            "step_cpu_s": r["driver_step_cpu_s"],
            "step_wall_s": r["driver_step_wall_s"],
        }
        if r["model"] == "mnist" and r["mode"] in ("dominant", "bulk"):
            c["step_time_met"] = r["driver_step_wall_s"] <= 0.5
        checks[run] = c
        lines.append(f"goal {run}: {c}")
    if "loss_check" in result:
        for mode in ("dominant", "bulk", "sgd"):
            ratio = result["loss_check"][f"{mode} ratio"]
            checks[f"digits {mode} loss ratio"] = {"ratio": ratio, "met": abs(ratio - 1) <= 0.02}
            lines.append(f"goal digits {mode}: final loss tol 0.05 / every step = {ratio:.4f}")
    return {"checks": checks, "lines": lines}
