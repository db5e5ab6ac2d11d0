"""Smoke test of the benchmark scripts: every ``--quick`` mode runs and writes its JSON and the summary.

One subprocess runs ``benchmarks/run_all.py --profile quick`` (all four scripts in one interpreter; ``scaling``
launches a two-process ``torchrun`` job), with one thread per process so that a busy shared CPU does not slow it
down. The timings it prints are meaningless at this size; only that everything runs is checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("refresh_cost", "hvp_throughput", "trainer_overhead", "scaling")


@pytest.mark.slow  # up to 300 s: out of the README's test command, run by CI as `pytest -m slow`
@pytest.mark.skipif(not (ROOT / "benchmarks" / "run_all.py").is_file(), reason="benchmarks/ not present")
def test_quick_benchmarks_run(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--profile", "quick", "--out-dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    for name in NAMES:
        result = json.loads((tmp_path / f"{name}.json").read_text())
        assert result["benchmark"] == name
        assert result["environment"]["torch"]
    refresh = json.loads((tmp_path / "refresh_cost.json").read_text())
    assert {"lobpcg-warm", "eigsh-LA", "eigsh-paper"} <= set(refresh["summary"])
    assert all(r["distance"] < 0.5 for r in refresh["records"])
    throughput = json.loads((tmp_path / "hvp_throughput.json").read_text())
    assert all(row["rel_diff"] < 1e-4 for res in throughput["results"].values() for row in res["rows"])
    scaling = json.loads((tmp_path / "scaling.json").read_text())
    assert any(r["world_size"] == 2 for r in scaling["processes"])
    assert all(r["rel_diff_vs_1proc"] < 1e-4 for r in scaling["processes"])
    summary = (tmp_path / "summary.md").read_text()
    assert "FAILED" not in summary
