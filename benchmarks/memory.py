"""Peak extra memory of a basis refresh, in units of one d-sized float32 vector, against scipy's ``eigsh``.

Every configuration runs in a fresh process (``--worker``), so the kernel's peak resident set (``VmHWM``, reset
through ``/proc/self/clear_refs``, glibc's mmap threshold pinned so freed blocks go back to the OS) measures that
refresh alone. In the worker: build the model and its Hessian dataset, build ``HessianOperator``, apply it once
(warm-up: autograd and allocator caches), then measure ``peak RSS during the refresh − RSS before it`` for one of

* ``lanczos``: cold ``top_eigenpairs(method="lanczos")`` (thick restart, ``max_basis_vectors`` default);
* ``lobpcg-warm``: ``top_eigenpairs(init=V)`` from the basis ``V`` of a cold solve at the parameters before one SGD
  step (what ``SubspaceTrainer`` does at every refresh after the first; ``V`` exists before and is not counted);
* ``eigsh-scipy``: the baseline, plain ``scipy.sparse.linalg.eigsh(LinearOperator(matvec=H·), k, which="LA",
  tol=1e-3)`` on the same operator (ARPACK keeps ``ncv = max(2k + 1, 20)`` vectors);
* ``eigsh``: the library's wrapper (``method="eigsh"``, adds one block product of the k vectors for the residuals);
* ``hvp``: one ``matvec`` (the operator's own share of every row above).

Models: the paper's MLP (784-w-w-10 on MNIST images, tanh/MSE) for a few widths, and optionally a BERT-base-sized
``BertForSequenceClassification`` from a config (hidden 768, ``--bert-layers`` layers, eager attention) with a
Hessian set of 64 random-token sequences of 64 tokens. k = 2 and 10. The table gives ``extra peak / (4 d bytes)``,
the ratio to ``eigsh-scipy`` for the same model and k, the HVP count and the wall time.

Run: ``python benchmarks/memory.py`` (MLPs, ~15 min on one idle core), ``--bert`` (adds the BERT rows: slow, about
10 s per HVP on one core), ``--quick`` (seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from typing import Any

import bench_utils as bu
import numpy as np
import torch

from hf_subspace import HessianOperator
from hf_subspace.eigensolvers import top_eigenpairs

METHODS = ("hvp", "eigsh-scipy", "eigsh", "lanczos", "lobpcg-warm", "trainer-bulk")
TOL = 1e-3


class DiagonalOperator:
    """A cheap stand-in of size ``d``: ``diag(λ)`` with 12 outliers (20 … 3) over a bulk in [0, 0.3] (seeded order).

    Its product allocates only the ``[d, m]`` result (like any operator's output), so rows measured on it give the
    solver's own share of a refresh at sizes where real Hessian-vector products are too slow for this machine.
    """

    def __init__(self, dim: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.dim, self.dtype, self.device = dim, torch.float32, torch.device("cpu")
        self.diag = 0.3 * torch.rand(dim, generator=gen) ** 3
        top = torch.tensor([20.0, 17.0, 15.0, 13.0, 12.0, 10.0, 8.0, 6.0, 5.0, 4.0, 3.5, 3.0])
        self.top_index = torch.randperm(dim, generator=gen)[: len(top)]
        self.diag[self.top_index] = top
        self.num_matvecs = 0

    def matmat(self, block: torch.Tensor) -> torch.Tensor:
        self.num_matvecs += int(block.shape[1])
        return self.diag[:, None] * block

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        self.num_matvecs += 1
        return self.diag * vector


def build(model_name: str, samples: int, seed: int) -> tuple[torch.nn.Module, list[dict[str, torch.Tensor]], Any]:
    """Model, Hessian batches and an SGD-step closure for ``mlp-<width>`` or ``bert-<layers>``."""
    if model_name.startswith("mlp-"):
        width = int(model_name.split("-")[1])
        x, y = bu.load_image_data("mnist", samples)
        model = bu.make_mlp(x.shape[1], (width, width), seed=seed)
        batches = bu.make_batches(x, y, 250)
    else:
        from transformers import BertConfig, BertForSequenceClassification

        layers = int(model_name.split("-")[1])
        torch.manual_seed(seed)
        config = BertConfig(num_hidden_layers=layers, num_labels=2, attn_implementation="eager")
        model = BertForSequenceClassification(config)
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(1000, config.vocab_size, (samples, 64), generator=gen)
        labels = torch.randint(0, 2, (samples,), generator=gen)
        batches = bu.make_batches({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, labels, 16)
    model.eval()

    def sgd_step(lr: float = 1e-3) -> None:
        model.zero_grad(set_to_none=True)
        out = model(**batches[0])
        out.loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p.add_(p.grad, alpha=-lr)
        model.zero_grad(set_to_none=True)

    return model, batches, sgd_step


def trainer_worker(args: argparse.Namespace) -> dict[str, Any]:
    """``SubspaceTrainer`` in bulk mode from step 0, refresh every 2 steps, ``--trainer-steps`` SGD steps.

    Extra peak = peak RSS during ``train()`` minus the RSS with the model and data loaded; ``extra_d`` counts the
    trainer's d-sized state (gradients, basis, warm start, θ_t and Δ buffers) plus the largest refresh.
    """
    import tempfile

    from hf_subspace import SubspaceTrainer, SubspaceTrainingArguments
    from hf_subspace.tensor_dataset import TensorDataset

    if args.model.startswith("bert-"):
        model, batches, _ = build(args.model, max(args.samples, 16 * args.trainer_steps), args.seed)
        model.train()
        columns = {key: torch.cat([b[key] for b in batches]) for key in batches[0]}
        batch_size = 16
    else:
        width = int(args.model.split("-")[1])
        x, y = bu.load_image_data("mnist", max(args.samples, 64 * args.trainer_steps))
        model = bu.make_mlp(x.shape[1], (width, width), seed=args.seed)
        columns, batch_size = {"pixel_values": x, "labels": y}, 64
    d = bu.num_params(model)
    with tempfile.TemporaryDirectory() as out:
        targs = SubspaceTrainingArguments(
            output_dir=out, optim="sgd", learning_rate=0.01, per_device_train_batch_size=batch_size,
            max_steps=args.trainer_steps, subspace_mode="bulk", subspace_k=args.k, subspace_start_step=0,
            subspace_refresh_steps=2, hessian_num_samples=args.samples, hessian_batch_size=batch_size,
            save_strategy="no", report_to="none",
            logging_steps=1, use_cpu=True, disable_tqdm=True,
        )  # fmt: skip
        trainer = SubspaceTrainer(model=model, args=targs, train_dataset=TensorDataset(columns))
        t0 = time.perf_counter()
        with bu.PeakMemory(torch.device("cpu")) as mem:
            trainer.train()
        seconds = time.perf_counter() - t0
    totals = [e["subspace/hvps_total"] for e in trainer.state.log_history if "subspace/hvps_total" in e]
    hvps = int(totals[-1]) if totals else None
    return {"d": d, "seconds": seconds, "hvps": hvps, "extra_mib": mem.mib, "rss_before_mib": (mem._base or 0) / 1024}


def worker(args: argparse.Namespace) -> None:
    """Measure one (model, method, k) configuration and print one JSON line."""
    bu.setup_process(args.threads)
    warnings.simplefilter("ignore")
    if args.method == "trainer-bulk":
        record = {"model": args.model, "method": args.method, "k": args.k, **trainer_worker(args)}
        record["extra_d"] = None if record["extra_mib"] is None else record["extra_mib"] / (4.0 * record["d"] / 2**20)
        print("RESULT " + json.dumps(record), flush=True)
        return
    if args.model.startswith("diag-"):
        op: Any = DiagonalOperator(int(float(args.model.split("-")[1])), args.seed)
        sgd_step = None
    else:
        model, batches, sgd_step = build(args.model, args.samples, args.seed)
        op = HessianOperator(model, batches)
    d = op.dim
    unit = 4.0 * d / 2**20  # MiB of one d-sized float32 vector
    init = None
    if args.method == "lobpcg-warm" and sgd_step is not None:
        init = top_eigenpairs(op, args.k, method="lanczos", seed=args.seed).eigenvectors
        sgd_step()
    elif args.method == "lobpcg-warm":  # the exact eigenvectors plus a 1e-2 perturbation (a slowly moving Hessian)
        init = torch.zeros(d, args.k)
        order = torch.argsort(op.diag[op.top_index], descending=True)[: args.k]
        init[op.top_index[order], torch.arange(args.k)] = 1.0
        init += 1e-2 * torch.randn(d, args.k, generator=torch.Generator().manual_seed(args.seed + 1)) / d**0.5
    gen = torch.Generator().manual_seed(args.seed)
    v = torch.randn(d, generator=gen)
    op.matvec(v)  # warm-up
    record: dict[str, Any] = {"model": args.model, "method": args.method, "k": args.k, "d": d}
    start_hvps = op.num_matvecs
    t0 = time.perf_counter()
    with bu.PeakMemory(torch.device("cpu")) as mem:
        if args.method == "hvp":
            op.matvec(v)
        elif args.method == "eigsh-scipy":
            import scipy.sparse.linalg as spla

            def matvec(x: np.ndarray) -> np.ndarray:
                return op.matvec(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32).reshape(-1))).numpy()

            lin = spla.LinearOperator((d, d), matvec=matvec, dtype=np.float32)
            v0 = v.numpy()
            values, _ = spla.eigsh(lin, k=args.k, which="LA", tol=TOL, v0=v0)
            record["eigenvalues"] = sorted(values.tolist(), reverse=True)
        else:
            method = "lobpcg" if args.method == "lobpcg-warm" else args.method
            result = top_eigenpairs(op, args.k, method=method, init=init, seed=args.seed, tol=TOL)
            record["eigenvalues"] = result.eigenvalues.tolist()
            record["converged"] = result.converged
            record["eigengap"] = getattr(result, "eigengap", None)
            del result
    record["seconds"] = time.perf_counter() - t0
    record["hvps"] = op.num_matvecs - start_hvps
    record["extra_mib"] = mem.mib
    record["extra_d"] = None if mem.mib is None else mem.mib / unit
    record["rss_before_mib"] = mem._base / 1024 if mem._base is not None else None
    print("RESULT " + json.dumps(record), flush=True)


def run_case(args: argparse.Namespace, model: str, method: str, k: int, samples: int) -> dict[str, Any] | None:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--model", model, "--method", method]
    cmd += [
        "--k",
        str(k),
        "--samples",
        str(samples),
        "--seed",
        str(args.seed),
        "--trainer-steps",
        str(args.trainer_steps),
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    print(f"  {model} {method} k={k} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bu.add_common_args(parser, "memory.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="mlp-800")
    parser.add_argument("--method", default="lanczos", choices=METHODS)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--samples", type=int, default=1000, help="Hessian samples of the MLPs")
    parser.add_argument("--widths", type=int, nargs="*", default=[800, 2000])
    parser.add_argument("--ks", type=int, nargs="+", default=[2, 10])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--trainer-steps", type=int, default=4, help="steps of the trainer-bulk rows")
    parser.add_argument("--trainer-widths", type=int, nargs="*", default=[], help="MLP widths of trainer-bulk rows")
    parser.add_argument("--bert", action="store_true", help="add the BERT-base-sized rows (slow)")
    parser.add_argument("--bert-layers", type=int, default=12)
    parser.add_argument("--bert-methods", nargs="+", default=["hvp", "lanczos"], choices=METHODS)
    parser.add_argument(
        "--bert-samples",
        type=int,
        default=64,
        help="Hessian sequences of the BERT rows (batches of 16: 16 = one batch)",
    )
    parser.add_argument(
        "--diag-sizes", type=float, nargs="*", default=[], help="d of the cheap diagonal stand-in rows (e.g. 1.1e8)"
    )
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    bu.setup_process(args.threads)
    if args.quick:
        args.widths, args.ks, args.samples = [100], [2], 250
    info = bu.environment_info(torch.device("cpu"))
    solvers = [m for m in args.methods if m != "trainer-bulk"]
    cases = [(f"diag-{int(n)}", m, k, 0) for n in args.diag_sizes for k in args.ks for m in solvers if m != "hvp"]
    cases += [(f"mlp-{w}", m, k, args.samples) for w in args.widths for k in args.ks for m in solvers]
    cases += [(f"mlp-{w}", "trainer-bulk", k, args.samples) for w in args.trainer_widths for k in args.ks]
    if args.bert:
        bert = f"bert-{args.bert_layers}"
        n = args.bert_samples
        cases += [(bert, m, k, n) for k in args.ks for m in args.bert_methods if m != "trainer-bulk"]
        cases += [(bert, "trainer-bulk", k, n) for k in args.ks if "trainer-bulk" in args.bert_methods]
    rows: list[dict[str, Any]] = []
    out = bu.output_path(args, "memory.json")
    for model, method, k, samples in cases:
        record = run_case(args, model, method, k, samples)
        if record is None:
            continue
        rows.append(record)
        print(
            f"{model:9s} d={record['d']:>11,} k={k:<2} {method:12s} extra {bu.fmt_num(record['extra_d'])} d, "
            f"{record['hvps']} HVPs, {record['seconds']:.1f} s",
            flush=True,
        )
        add_ratios(rows)
        bu.write_json(out, {"environment": bu.finish_environment(dict(info)), "rows": rows})  # after every case
    print(report(rows))


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """``ratio_to_eigsh_scipy``: extra peak over the baseline's for the same model and k (``None`` without one)."""
    baseline = {(r["model"], r["k"]): r["extra_d"] for r in rows if r["method"] == "eigsh-scipy"}
    for r in rows:
        base = baseline.get((r["model"], r["k"]))
        r["ratio_to_eigsh_scipy"] = None if base in (None, 0) or r["extra_d"] is None else r["extra_d"] / base


def report(rows: list[dict[str, Any]]) -> str:
    """The markdown table of the measured rows."""
    table = []
    for r in rows:
        gib = None if r["extra_mib"] is None else r["extra_mib"] / 1024
        table.append(
            [r["model"], f"{r['d']:,}", r["k"], r["method"], bu.fmt_num(r["extra_d"]), bu.fmt_num(gib),
             bu.fmt_num(r.get("ratio_to_eigsh_scipy")), r["hvps"], f"{r['seconds']:.1f}"]
        )  # fmt: skip
    headers = ["model", "d", "k", "method", "extra peak (d)", "GiB", "÷ eigsh-scipy", "HVPs", "s"]
    return bu.markdown_table(headers, table)


if __name__ == "__main__":
    main()
