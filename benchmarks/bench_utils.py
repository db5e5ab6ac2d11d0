"""Shared helpers of the benchmark scripts: environment record, timing, peak memory, data, models, tables.

Every script in ``benchmarks/`` imports this module by its plain name (the scripts' own folder is first on
``sys.path`` when they run as ``python benchmarks/<script>.py`` or under ``torchrun``). Nothing here is part of the
``hf_subspace`` package; the benchmarks use only its public API.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Must precede the first `import torch` (libgomp reads it when loaded): with the default policy, OpenMP threads
# spin while waiting, and on a CPU shared with other busy processes a 2-thread torch ran 40× slower than 1 thread
# (measured: 180 ms vs 4.4 ms per MLP forward+backward). Passive waiting removes that collapse. Override by exporting
# OMP_WAIT_POLICY yourself.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# NumPy/SciPy's OpenBLAS keeps its own spinning thread pool beside torch's: ARPACK's vector work is tiny, so one
# thread, which keeps scipy.eigsh from competing with the torch thread that computes its products.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import torch

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
PEERS_DIR = BENCH_DIR / ".peers"
# The offline data sits beside the repository (../shared/data, as in CI); each file can be pointed elsewhere.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MNIST_NPZ = Path(os.environ.get("HF_SUBSPACE_MNIST_NPZ", SHARED_DATA / "mnist" / "train.npz"))
SST2_TSV = Path(os.environ.get("HF_SUBSPACE_SST2_TSV", SHARED_DATA / "sst2" / "train.tsv"))
CIFAR_NPZ = Path(os.environ.get("HF_SUBSPACE_CIFAR_NPZ", SHARED_DATA / "cifar10" / "train.npz"))


# -- process setup ---------------------------------------------------------------------------------------------
def setup_process(threads: int | None = None) -> None:
    """Offline Hugging Face, deterministic-ish CPU setup, and memory that is returned to the OS on free.

    ``mallopt(M_MMAP_THRESHOLD, 128 KiB)`` fixes glibc's mmap threshold (it otherwise grows after each large free),
    so large tensors are unmapped when freed and the kernel's peak-RSS counter measures each configuration alone.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    if threads:
        torch.set_num_threads(threads)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD


def resolve_device(name: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
    return device


def add_common_args(parser: argparse.ArgumentParser, default_out: str) -> None:
    """Options every script takes: ``--quick``, ``--device``, ``--threads``, ``--seed``, ``--out``."""
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run with tiny settings")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=None, help=f"JSON result file (default: benchmarks/results/{default_out})"
    )


def output_path(args: argparse.Namespace, default_name: str) -> Path:
    """Where the JSON goes: ``--out``, else ``results/<name>`` (``results/quick/<name>`` with ``--quick``)."""
    if args.out is not None:
        return Path(args.out)
    folder = RESULTS_DIR / "quick" if args.quick else RESULTS_DIR
    if not args.quick and getattr(args, "device", "cpu") not in ("cpu", "auto"):
        folder = RESULTS_DIR / str(args.device)
    return folder / default_name


# -- environment record ----------------------------------------------------------------------------------------
def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except Exception:
        return None
    return getattr(mod, "__version__", "installed")


def _git_state() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO_DIR, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    rev = head.stdout.strip() if head.returncode == 0 else "no commit"
    return f"{rev}{' + uncommitted changes' if dirty.stdout.strip() else ''}"


def environment_info(device: torch.device) -> dict[str, Any]:
    """Machine, versions, date and load, recorded at the start of every benchmark."""
    import scipy
    import transformers

    import hf_subspace

    info: dict[str, Any] = {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "host_cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "scipy": scipy.__version__,
        "numpy": np.__version__,
        "hf_subspace": hf_subspace.__version__,
        "git": _git_state(),
        "device": str(device),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "load_average_start": list(os.getloadavg()),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def finish_environment(info: dict[str, Any]) -> dict[str, Any]:
    """Add the load average at the end (the machine may be shared: a busy one inflates every wall time)."""
    info["load_average_end"] = list(os.getloadavg())
    return info


def load_peers() -> dict[str, Any]:
    """Import PyHessian and curvlinops from ``benchmarks/.peers`` (see README) when present.

    Returns:
        ``{"pyhessian": module or None, "curvlinops": module or None, "notes": {...}}``.
    """
    if PEERS_DIR.is_dir() and str(PEERS_DIR) not in sys.path:
        sys.path.append(str(PEERS_DIR))
    out: dict[str, Any] = {"notes": {}}
    for name, label in (("pyhessian", "PyHessian"), ("curvlinops", "curvlinops-for-pytorch")):
        try:
            out[name] = __import__(name)
            dist = (
                next(iter(PEERS_DIR.glob(f"{label.replace('-', '_')}-*.dist-info")), None)
                if PEERS_DIR.is_dir()
                else None
            )
            version = dist.name.removesuffix(".dist-info").split("-")[1] if dist else "installed"
            out["notes"][name] = f"{label} {version}"
        except Exception as err:  # missing or broken install: the script runs the built-in equivalent or skips
            out[name] = None
            out["notes"][name] = f"not importable ({type(err).__name__}: {err}); see benchmarks/README.md"
    return out


# -- statistics and tables -------------------------------------------------------------------------------------
def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    """Median, min, max and count of finite values (``None`` entries when there are none)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def fmt_num(value: float | None, digits: int = 3) -> str:
    """Compact number: 3 significant digits, ``–`` for missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if value == 0:
        return "0"
    mag = abs(value)
    if mag >= 1000:
        return f"{value:,.0f}"
    if mag >= 1e-3:
        return f"{value:.{digits}g}"
    return f"{value:.2e}"


def fmt_stat(stat: dict[str, Any], digits: int = 3) -> str:
    """``median [min–max]`` of a :func:`summarize` dict."""
    if not stat or stat.get("median") is None:
        return "–"
    med, lo, hi = stat["median"], stat["min"], stat["max"]
    if lo == hi:
        return fmt_num(med, digits)
    return f"{fmt_num(med, digits)} [{fmt_num(lo, digits)}–{fmt_num(hi, digits)}]"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (tensors and numpy values converted) as indented JSON, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def default(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return obj.tolist()
        if isinstance(obj, (np.generic,)):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
        if isinstance(obj, Path):
            return str(obj)
        return str(obj)

    path.write_text(json.dumps(payload, indent=2, default=default) + "\n")
    print(f"\nwrote {path}")


# -- timing and memory -----------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Wall-clock and process CPU seconds of one call (CPU time is robust to other processes' load)."""

    wall: float
    cpu: float
    result: Any = None


def timed(fn: Callable[[], Any], device: torch.device) -> Timing:
    """Run ``fn`` once and time it (GPU work synchronised before and after)."""
    synchronize(device)
    w0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    synchronize(device)
    return Timing(time.perf_counter() - w0, time.process_time() - c0, result)


def _status_kib(key: str) -> float | None:
    with contextlib.suppress(OSError):
        match = re.search(rf"^{key}:\s+(\d+)\s+kB", Path("/proc/self/status").read_text(), re.MULTILINE)
        if match:
            return float(match.group(1))
    return None


@dataclass
class PeakMemory:
    """Peak memory added by the code inside ``with PeakMemory(device) as mem:``; ``mem.mib`` afterwards.

    GPU: ``torch.cuda.max_memory_allocated`` above the allocation at entry. CPU: the kernel's peak resident set
    (``VmHWM``, reset through ``/proc/self/clear_refs``) above the resident set at entry; ``None`` where the kernel
    does not allow the reset.
    """

    device: torch.device
    mib: float | None = None
    _base: float | None = field(default=None, repr=False)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = float(torch.cuda.memory_allocated(self.device))
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
                self._base = _status_kib("VmRSS")
            except OSError:
                self._base = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._base is None:
            return
        if self.device.type == "cuda":
            synchronize(self.device)
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
        else:
            peak = _status_kib("VmHWM")
            self.mib = None if peak is None else max(0.0, peak - self._base) / 1024


# -- data ------------------------------------------------------------------------------------------------------
def load_digits_data() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 real 8×8 digits (offline), pixels scaled to [0, 1]; ``([N, 64], [N])``."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y, dtype=torch.long)


def load_mnist_data(n: int = 5000) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` official MNIST training images (``MNIST-5k`` for n=5000), flattened, scaled to [0, 1]."""
    if not MNIST_NPZ.is_file():
        raise SystemExit(f"MNIST file {MNIST_NPZ} not found; set HF_SUBSPACE_MNIST_NPZ or use --data digits")
    data = np.load(MNIST_NPZ)
    x = torch.tensor(data["x"][:n].reshape(n, -1) / 255.0, dtype=torch.float32)
    return x, torch.tensor(data["y"][:n], dtype=torch.long)


def load_image_data(name: str, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``"digits"`` or ``"mnist"`` (``n`` samples, default 5,000 for MNIST and all 1,797 digits)."""
    if name == "digits":
        x, y = load_digits_data()
        return (x[:n], y[:n]) if n else (x, y)
    if name == "mnist":
        return load_mnist_data(n or 5000)
    raise SystemExit(f"unknown data set {name!r}: use digits or mnist")


def synthetic_cifar(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10-shaped random images ``[n, 3, 32, 32]`` and labels (timing only: cost does not depend on content)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def load_sst2_data(n: int, max_length: int = 64) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
    """The first ``n`` real SST-2 training sentences, tokenised with the project's offline word-level tokenizer.

    Returns:
        ``({"input_ids", "attention_mask"}, labels, vocab_size)``.
    """
    import csv

    if not SST2_TSV.is_file():
        raise SystemExit(f"SST-2 file {SST2_TSV} not found; set HF_SUBSPACE_SST2_TSV")
    with SST2_TSV.open(encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    texts, labels = [r[0] for r in rows[:n]], [int(r[1]) for r in rows[:n]]
    tokenizer = _word_tokenizer([r[0] for r in rows[: max(n, 20000)]], vocab_size=8000, max_length=max_length)
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding="max_length", return_tensors="pt")
    inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    return inputs, torch.tensor(labels, dtype=torch.long), len(tokenizer)


def _word_tokenizer(texts: list[str], vocab_size: int, max_length: int) -> Any:
    """``hf_subspace.experiments.data.build_tokenizer`` (offline word-level tokenizer), or the same built here when that module's
    ``datasets`` dependency is missing (as on the GPU machine's stock image)."""
    try:
        from hf_subspace.experiments.data import build_tokenizer
    except ImportError:
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
        from transformers import PreTrainedTokenizerFast

        core = Tokenizer(models.WordLevel(unk_token="[UNK]"))
        core.normalizer = normalizers.Lowercase()
        core.pre_tokenizer = pre_tokenizers.Whitespace()
        core.train_from_iterator(
            texts, trainer=trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]"])
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=core,
            pad_token="[PAD]",
            unk_token="[UNK]",
            model_max_length=max_length,
            padding_side="right",
        )
    return build_tokenizer(texts, vocab_size=vocab_size, max_length=max_length)


def make_batches(
    inputs: torch.Tensor | dict[str, torch.Tensor], labels: torch.Tensor, batch_size: int, key: str = "pixel_values"
) -> list[dict[str, torch.Tensor]]:
    """Hugging Face style dict batches (``{key: x, "labels": y}`` or the input dict plus labels)."""
    out = []
    for s in range(0, len(labels), batch_size):
        if isinstance(inputs, dict):
            batch = {k: v[s : s + batch_size] for k, v in inputs.items()}
        else:
            batch = {key: inputs[s : s + batch_size]}
        batch["labels"] = labels[s : s + batch_size]
        out.append(batch)
    return out


def to_device(batches: list[dict[str, torch.Tensor]], device: torch.device) -> list[dict[str, torch.Tensor]]:
    """Move every tensor of every batch (done once, so timings exclude host→device copies)."""
    from accelerate.utils import send_to_device

    return [send_to_device(b, device) for b in batches]


# -- models ----------------------------------------------------------------------------------------------------
def make_mlp(input_size: int, hidden: Sequence[int] = (200, 200), seed: int = 0) -> torch.nn.Module:
    """The paper's MLP (tanh, MSE loss) from ``hf_subspace.models``."""
    from hf_subspace.models import MLPConfig, MLPForImageClassification

    torch.manual_seed(seed)
    return MLPForImageClassification(MLPConfig(input_size=input_size, hidden_sizes=list(hidden)))


def make_cnn(seed: int = 0) -> torch.nn.Module:
    """The paper's CIFAR-10 CNN (two conv blocks of 32 channels, ReLU, MSE loss)."""
    from hf_subspace.models import CNNConfig, CNNForImageClassification

    torch.manual_seed(seed)
    return CNNForImageClassification(CNNConfig())


def make_transformer(vocab_size: int, seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """The paper's SST-2 transformer (2 post-LN layers, width 64, explicit attention, MSE loss)."""
    from hf_subspace.models import SST2TransformerConfig, SST2TransformerForSequenceClassification

    torch.manual_seed(seed)
    return SST2TransformerForSequenceClassification(SST2TransformerConfig(vocab_size=vocab_size, **overrides))


def num_params(model: torch.nn.Module) -> int:
    """Number of trainable parameters (the dimension d of the Hessian)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def sgd_steps(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    lr: float,
    batch_size: int,
    generator: torch.Generator,
    key: str = "pixel_values",
) -> float:
    """Plain minibatch SGD for ``steps`` steps (to reach a realistic point of training); returns the last loss."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss = torch.tensor(float("nan"))
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (batch_size,), generator=generator)
        loss = model(**{key: x[idx.to(x.device)], "labels": y[idx.to(y.device)]}).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return float(loss.detach())


def invalidate_gradient_cache(params: Sequence[torch.Tensor]) -> None:
    """Bump the version counters of ``params`` (an in-place no-op), so ``HessianOperator.loss_and_gradient`` does a
    real pass instead of returning the loss and gradient its last product pass cached for unchanged parameters."""
    with torch.no_grad():
        for p in params:
            p.add_(0.0)


@contextlib.contextmanager
def quiet_warnings() -> Iterator[None]:
    """Silence the solvers' not-converged RuntimeWarnings (recorded in the results instead) and PyHessian's
    ``backward(create_graph=True)`` reference-cycle warning (its gradients are reset after each call)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.filterwarnings("ignore", message="Using backward.. with create_graph=True")
        yield
