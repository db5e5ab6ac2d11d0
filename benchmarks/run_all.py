"""Run every benchmark in one process with one of three prepared profiles, and write one markdown summary.

Profiles:

* ``quick``: each script's ``--quick`` smoke run (seconds; used by ``tests/test_benchmarks.py``);
* ``cpu``: the full CPU tables of ``docs/performance.md`` (about 45 min on 2 idle cores);
* ``gpu``: the same tables sized for one short call on a GPU machine (``--device cuda``; budget about 5 min),
  plus the wall time of a 20,000-step MNIST-5k Dom-SGD run extrapolated from 500 measured steps.

Each benchmark writes ``<out-dir>/<name>.json``; ``<out-dir>/summary.md`` collects the printed tables with the
machine record. A benchmark that fails is reported in the summary and the others still run (exit status 1).

``--stage-data`` copies MNIST-5k and the first 20,000 SST-2 sentences into ``benchmarks/.data`` (git-ignored), the
folder a GPU call carries; ``benchmarks/gpu_run.sh`` is the prepared command for that call (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import bench_utils as bu

NAMES = ("refresh_cost", "refresh_cost_mnist", "hvp_throughput", "trainer_overhead", "scaling")

PROFILES: dict[str, dict[str, list[str]]] = {
    "quick": {
        "refresh_cost": ["--quick", "--threads", "1"],
        "hvp_throughput": ["--quick", "--threads", "1"],
        "trainer_overhead": ["--quick", "--threads", "1", "--extrapolate-steps", "3"],
        "scaling": ["--quick", "--threads", "1"],
    },
    "cpu": {
        "refresh_cost": [],
        "refresh_cost_mnist": ["--data", "mnist", "--hessian-samples", "1000", "--steps", "30", "--cold-every", "10"],
        "hvp_throughput": [
            "--repeats",
            "2",
            "--cnn-samples",
            "128",
            "--cnn-batch-size",
            "128",
            "--transformer-samples",
            "32",
            "--transformer-batch-size",
            "32",
        ],
        "trainer_overhead": ["--repeats", "2", "--extrapolate-steps", "20", "--extrapolate-eigsh-steps", "5"],
        "scaling": [],
    },
    "gpu": {
        "refresh_cost": ["--steps", "100", "--cold-every", "10", "--repeats", "3"],
        "refresh_cost_mnist": ["--data", "mnist", "--steps", "60", "--cold-every", "10", "--repeats", "3"],
        "hvp_throughput": [
            "--repeats",
            "5",
            "--cnn-samples",
            "5000",
            "--cnn-batch-size",
            "1000",
            "--transformer-samples",
            "1000",
            "--transformer-batch-size",
            "250",
        ],
        "trainer_overhead": ["--repeats", "2", "--extrapolate-steps", "500", "--extrapolate-eigsh-steps", "100"],
        "scaling": ["--parts", "width", "size"],
    },
}


def stage_data() -> None:
    """Copy the offline data the benchmarks read into ``benchmarks/.data`` (for a device call's ``carry``)."""
    import numpy as np

    target = bu.BENCH_DIR / ".data"
    target.mkdir(exist_ok=True)
    data = np.load(bu.MNIST_NPZ)
    np.savez(target / "mnist_train_5k.npz", x=data["x"][:5000], y=data["y"][:5000])
    with bu.SST2_TSV.open(encoding="utf-8") as src, (target / "sst2_train_20k.tsv").open("w", encoding="utf-8") as dst:
        for i, line in enumerate(src):
            if i > 20000:
                break
            dst.write(line)
    for peer in ("pyhessian", "curvlinops"):
        if not (bu.PEERS_DIR / peer).is_dir():
            print(f"note: benchmarks/.peers/{peer} missing: install the peers first (benchmarks/README.md)")
    print(f"staged {sorted(p.name for p in target.iterdir())} in {target}")


def run_one(name: str, argv: list[str], out_dir: Path) -> tuple[dict[str, Any] | None, str, float]:
    """Run one benchmark's ``main`` in this process; return its result, captured tables and seconds."""
    module = importlib.import_module(name.removesuffix("_mnist"))
    buffer = io.StringIO()
    start = time.perf_counter()
    result: dict[str, Any] | None = None
    try:
        result = module.main([*argv, "--out", str(out_dir / f"{name}.json")])
    except Exception:
        buffer.write(f"**{name} FAILED**\n\n```\n{traceback.format_exc()}```\n")
        print(traceback.format_exc(), file=sys.stderr)
    else:
        with contextlib.redirect_stdout(buffer):
            module.print_tables(result)
    return result, buffer.getvalue(), time.perf_counter() - start


def summarize_folder(out_dir: Path, profile: str) -> str:
    """Rebuild ``summary.md`` from the JSONs in ``out_dir`` (after runs made in several sessions)."""
    sections, env = [], None
    for name in NAMES:
        path = out_dir / f"{name}.json"
        if not path.is_file():
            continue
        result = json.loads(path.read_text())
        env = env or result["environment"]
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            importlib.import_module(name.removesuffix("_mnist")).print_tables(result)
        e = result["environment"]
        sections.append(
            f"## {name}\n\n{e['date_utc']} UTC, load average {e['load_average_start'][0]:.2f} → "
            f"{e['load_average_end'][0]:.2f}, threads {e['torch_threads']}\n{buffer.getvalue()}"
        )
    if env is None:
        raise SystemExit(f"no benchmark JSON in {out_dir}")
    text = _header(env, profile) + "\n" + "\n".join(sections)
    (out_dir / "summary.md").write_text(text)
    return text


def _header(env: dict[str, Any], profile: str) -> str:
    return (
        f"# hf-subspace benchmarks, profile {profile}\n\n"
        f"{env['date_utc']} UTC · {env.get('gpu', env['host_cpu'])} · {env['cpu_count']} CPUs · torch "
        f"{env['torch']} · transformers {env['transformers']} · scipy {env['scipy']} · hf-subspace "
        f"{env['hf_subspace']} ({env['git']}) · threads {env['torch_threads']} · OMP_WAIT_POLICY "
        f"{env['omp_wait_policy']} · load average {env['load_average_start'][0]:.2f} → "
        f"{env['load_average_end'][0]:.2f}\n"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    p.add_argument("--device", default=None, help="cpu / cuda / auto (default: cuda for the gpu profile, else cpu)")
    p.add_argument("--out-dir", type=Path, default=None, help="default: benchmarks/results/<profile>")
    p.add_argument("--only", nargs="+", choices=NAMES, default=list(NAMES))
    p.add_argument("--threads", type=int, default=None, help="torch threads of every benchmark (recorded)")
    p.add_argument("--summarize-only", action="store_true", help="rebuild summary.md from the JSONs in --out-dir")
    p.add_argument("--stage-data", action="store_true", help="copy the offline data to benchmarks/.data and exit")
    args = p.parse_args(argv)
    args.extra = ["--threads", str(args.threads)] if args.threads else []
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.stage_data:
        stage_data()
        return 0
    device = args.device or ("cuda" if args.profile == "gpu" else "cpu")
    out_dir = args.out_dir or (bu.RESULTS_DIR / args.profile)
    if args.summarize_only:
        summarize_folder(out_dir, args.profile)
        print(f"wrote {out_dir / 'summary.md'}")
        return 0
    out_dir.mkdir(parents=True, exist_ok=True)
    bu.setup_process(args.threads)
    env = bu.environment_info(bu.resolve_device(device))
    sections = []
    failed = []
    for name in args.only:
        if name not in PROFILES[args.profile]:
            continue
        print(f"\n===== {name} ({args.profile}, {device}) =====", flush=True)
        argv_one = [*PROFILES[args.profile][name], "--device", device, *args.extra]
        result, tables, seconds = run_one(name, argv_one, out_dir)
        if result is None:
            failed.append(name)
        sections.append(f"## {name} ({seconds:.0f} s)\n\n`{' '.join(argv_one)}`\n{tables}")
    env = bu.finish_environment(env)
    (out_dir / "summary.md").write_text(_header(env, args.profile) + "\n" + "\n".join(sections))
    print(f"\nwrote {out_dir / 'summary.md'}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
