"""``benchmarks/gpu_fsdp2.py`` (the prepared GPU call of issue 22): its arguments, and its trainer part in quick mode
on the CPU (the unsharded reference run and its resume; the FSDP2 run needs a launcher and, to be sharded, a GPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_fsdp2.py"


def test_arguments_choose_the_parts_and_the_quick_size_on_cpu(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    monkeypatch.setenv("DEVICE", "cpu")
    import gpu_fsdp2

    args = gpu_fsdp2.parse_args(["--part", "trainer", "--no-fsdp", "--out", "x"])
    assert (args.part, args.no_fsdp, args.out, args.quick) == ("trainer", True, "x", True)
    assert args.size == gpu_fsdp2.SIZES["quick"]
    assert gpu_fsdp2.parse_args([]).part == "all"
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(SystemExit, match="launcher"):
        gpu_fsdp2.main(["--part", "trainer"])


def test_quick_trainer_part_runs_and_resumes_exactly(tmp_path: Path) -> None:
    env = {**os.environ, "DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    out = tmp_path / "out"
    argv = [sys.executable, str(SCRIPT), "--part", "trainer", "--no-fsdp", "--quick", "--out", str(out)]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "trainer_plain.json").read_text())
    assert not rows["sharded"] and rows["product"] == "double_backward" and rows["world"] == 1
    assert sorted(rows["losses"]) == ["1", "2", "3", "4"] and rows["resumed_losses"] == rows["losses"]
    assert any("subspace/eigenvalue_top_01" in metrics for metrics in rows["subspace"].values())
