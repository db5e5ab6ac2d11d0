"""``model_cards/gpu_paper_runs.sh`` (issue 20, point 8): its QUICK=1 mode on the CPU, on tiny generated data in the
staged layout. What it must hold on the lent GPU: only an archive and a log in ``$OUT`` (the device returns at most 8
files), everything else in a scratch folder, and a refusal before anything runs when the data cannot hold the
validation size asked for."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "model_cards" / "gpu_paper_runs.sh"
RUN_NAMES = (
    "mnist5k_sgd",
    "mnist5k_momentum",
    "mnist5k_adam",
    "mnist5k_sam",
    "mnist5k_eos",
    "cnn_cifar10",
    "vit_cifar10",
    "transformer_sst2",
    "vit_cifar10_gd_prefix",
    "transformer_sst2_gd_prefix",
)

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash")


def _idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def _stage(root: Path, n_train: int = 70, n_test: int = 25) -> Path:
    """The layout ``gpu_paper_runs.sh stage`` writes, with random images (QUICK takes 60 train / 20 validation)."""
    rng = np.random.default_rng(0)
    (root / "mnist").mkdir(parents=True)
    (root / "cifar10").mkdir()
    labels = np.arange(max(n_train, n_test)) % 10
    np.savez(root / "mnist" / "train.npz", x=rng.integers(0, 256, (n_train, 28, 28), np.uint8), y=labels[:n_train])
    _idx(root / "mnist" / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n_test, 28, 28)))
    _idx(root / "mnist" / "t10k-labels-idx1-ubyte.gz", labels[:n_test])
    np.savez(root / "cifar10" / "train.npz", x=rng.integers(0, 256, (n_train, 32, 32, 3), np.uint8), y=labels[:n_train])
    np.savez(root / "cifar10" / "test.npz", x=rng.integers(0, 256, (n_test, 32, 32, 3), np.uint8), y=labels[:n_test])
    (root / "sst2").mkdir()
    words = ["good", "bad", "film", "plot", "dull", "fine", "great", "slow"]
    for name, n in (("train.tsv", n_train), ("dev.tsv", n_test)):
        rows = [" ".join(words[(i + j) % 8] for j in range(3 + i % 4)) + f"\t{i % 2}" for i in range(n)]
        (root / "sst2" / name).write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    return root


def _run(tmp_path: Path, data: Path, only: str | None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """The script in QUICK mode, one run at a time, with its budget (which stops runs) well above ``timeout``."""
    env = {
        **os.environ,
        "QUICK": "1",
        "DATA": str(data),
        "OUT": str(tmp_path / "out"),
        "SCRATCH": str(tmp_path / "scratch"),
        "WHEELS": str(tmp_path / "no-wheels"),  # datasets and evaluate are installed here: nothing to install
        "PYTHON": sys.executable,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "JOBS": "1",
        "BUDGET_S": str(3 * timeout),
        "LADDER": "",  # no shorter-branch copies: one run per name
    }
    if only is not None:
        env["ONLY"] = only
    return subprocess.run(
        ["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_refuses_a_validation_size_the_data_cannot_hold_before_running(tmp_path: Path) -> None:
    # 15 official test images where QUICK asks for 20, and a 50-image training file where it asks for 60
    proc = _run(tmp_path, _stage(tmp_path / "data", n_train=50, n_test=15), None, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--num_validation 20 but --validation_file" in proc.stderr and "holds 15 examples" in proc.stderr
    assert "--num_train 60 but" in proc.stderr and "holds 50 examples" in proc.stderr
    assert "nothing was run" in proc.stdout
    assert not list((tmp_path / "scratch" / "runs").iterdir())  # refused before any run started
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["log.txt"]


def _check_results(tmp_path: Path, names: tuple[str, ...]) -> None:
    out = tmp_path / "out"
    returned = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert returned == ["gpu_paper_runs.tar.gz", "log.txt"]  # the device returns at most 8 files
    log = (out / "log.txt").read_text()
    for name in names:
        assert f"{name} seed 0: ok" in log, log
    with tarfile.open(out / "gpu_paper_runs.tar.gz") as tar:
        members = tar.getnames()
        assert not [m for m in members if m.endswith((".safetensors", ".bin", ".pt"))]  # no models or checkpoints
        for name in names:
            summary = json.load(tar.extractfile(f"runs/{name}-seed0/summary.json"))  # type: ignore[arg-type]
            assert summary["basis_tol"] == 0.05  # the reference-run conventions: certified bases, the EMA switch
            fixed = name == "mnist5k_eos" or name.endswith("_gd_prefix")  # GD prefixes switch at a fixed step
            assert summary["switch_rule"]["rule"] == ("fixed" if fixed else "ema")
            assert f"runs/{name}-seed0/figure.png" in members and f"logs/{name}-seed0.log" in members
            machine = json.load(tar.extractfile(f"runs/{name}-seed0/machine.json"))  # type: ignore[arg-type]
            assert machine["torch_threads"] == 1 and "torch " in machine["platform"]  # what cards --adopt shows
            assert any(m.startswith(f"runs/{name}-seed0/") and m.endswith("/README.md") for m in members)
    assert (tmp_path / "scratch" / "runs" / f"{names[0]}-seed0" / "prefix").is_dir()  # the rest stayed in scratch


def test_ladder_adds_shorter_branches_and_extra_options_win(tmp_path: Path) -> None:
    """LIST=1 prints the runs without running them: the LADDER copies keep the prefix's cap and shorten the
    branches (NAME_b<steps after the cap>), and EXTRA comes after each run's own options (the later option wins)."""
    env = {**os.environ, "LIST": "1", "OUT": str(tmp_path / "out"), "ONLY": "vit_cifar10 transformer_sst2_gd_prefix",
           "SCALES": "0.5", "EXTRA": "--modes sgd,gd"}  # fmt: skip
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    specs = {line.split("|")[0]: line.split("|")[2].split() for line in proc.stdout.splitlines()}
    assert sorted(specs) == ["transformer_sst2_gd_prefix", "vit_cifar10", "vit_cifar10_b300"]
    for options in specs.values():
        assert options[-2:] == ["--modes", "sgd,gd"]
    ladder = specs["vit_cifar10_b300"]
    assert ladder[len(ladder) - 1 - ladder[::-1].index("--max_steps") + 1] == "600"  # cap 300 + half of 600
    assert ladder[ladder.index("--switch_step") + 1] == "300"


def test_quick_mode_returns_only_an_archive_and_a_log(tmp_path: Path) -> None:
    proc = _run(tmp_path, _stage(tmp_path / "data"), "mnist5k_eos")
    assert proc.returncode == 0, proc.stdout + proc.stderr + (tmp_path / "out" / "log.txt").read_text()
    _check_results(tmp_path, ("mnist5k_eos",))
    with tarfile.open(tmp_path / "out" / "gpu_paper_runs.tar.gz") as tar:
        summary = json.load(tar.extractfile("runs/mnist5k_eos-seed0/summary.json"))  # type: ignore[arg-type]
    assert summary["prefix_optimizer"] == "gd" and summary["num_train"] == 60 and summary["num_validation"] == 20


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("HF_SUBSPACE_GPU_SCRIPT_ALL"),
    reason="all eight QUICK runs take ~25 min on 2 CPU cores; set HF_SUBSPACE_GPU_SCRIPT_ALL=1 to run them",
)
def test_quick_mode_every_run(tmp_path: Path) -> None:
    proc = _run(tmp_path, _stage(tmp_path / "data"), None, timeout=1800)  # ~25 min of a loaded 2-core machine
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _check_results(tmp_path, RUN_NAMES)
