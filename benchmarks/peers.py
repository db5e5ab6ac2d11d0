"""Side by side with PyHessian 0.1, hessian-eigenthings 1.0.0a5 and curvlinops 3.0.1: top-k, trace and density.

Every tool gets the same model (eval mode, float32), the same Hessian set (``--samples`` images as one batch of
``--batch-size``; one batch is PyHessian's single-batch mode, which builds the first-order graph once and keeps it)
and the same loss (the models' MSE, ½‖logits − onehot‖² averaged over the batch). Setups: the paper's MLP on 1,000
MNIST images, its CNN on 1,000 CIFAR-10 images (stand-ins when the data are not staged) and its SST-2 transformer
(a small BERT-style encoder; ``--bert-samples`` sentences of 32 tokens after 100 SGD steps, as in
``solver_robustness.py``), whose token ids and attention mask travel to the peers as one ``[n, 2, 32]`` tensor.

* **top-k eigenpairs** (``--k``): hf-subspace ``top_eigenpairs(op, k)`` (its default: checked Lanczos);
  PyHessian ``hessian(model, criterion, data=(x, y)).eigenvalues(top_n=k)`` (deflated power iteration, its defaults
  ``maxIter=100, tol=1e-3``); hessian-eigenthings ``lanczos(op, k=k)`` at its default ``max_iter = 2k`` and at
  ``4k`` ("tuned"); curvlinops ``HessianLinearOperator(...).to_scipy()`` with scipy ``eigsh(which="LA", tol=1e-3)``.
  Reported: HVPs, time, the largest relative residual ``‖Hv − λv‖ / |λ|`` over the k pairs, the largest relative
  eigenvalue error against a reference (hf-subspace at ``tol=1e-4``, ``k + 4`` pairs, 60-vector basis), and whether
  the set is wrong (a reference eigenvector with λ_i − λ_{k+1} > 1 % λ_i keeps less than half its norm in the span).
* **trace** (``--trace-matvecs`` products): hf-subspace ``hessian_trace`` (Hutch++), hessian-eigenthings
  ``trace(method="hutch++")``, curvlinops ``hutchpp_trace``, and PyHessian ``trace()`` (Hutchinson until the running
  mean changes by less than 1e-3, at most 100 products). Error against a reference Hutch++ of ``--ref-trace-matvecs``.
* **density** (one probe of ``--density-steps`` Lanczos steps, PyHessian's default ``iter=100, n_v=1``):
  hf-subspace ``spectral_density``, hessian-eigenthings ``spectral_density``, PyHessian ``density``, curvlinops
  ``lanczos_approximate_spectrum`` (which also estimates the spectrum's ends with ARPACK, counted). Reported: HVPs,
  time and the density's mean eigenvalue (quadrature mean Σ w λ, or ∫ t φ(t) dt for curvlinops) against the
  reference trace / d.

Times are medians with [min–max] over ``--repeats``, wall and process CPU seconds; ``×`` = CPU time / hf-subspace's
CPU time on the same task (CPU time is robust to other processes' load on a shared machine). The peers are imported from the environment: install them into a separate one (see benchmarks/README.md);
missing peers are skipped with a note.

Run: ``benchmarks/.venv-peers/bin/python benchmarks/peers.py --threads 1`` (about 15 min of CPU), ``--quick``.
"""

from __future__ import annotations

import argparse
import importlib
import warnings
from collections.abc import Callable
from typing import Any

import bench_utils as bu
import numpy as np
import torch
from graph_reuse import build
from refresh_cost import LogitsOnly, PaperMSE, curvlinops_eigsh
from solver_robustness import build as robustness_build
from solver_robustness import wrong

from hf_subspace import HessianOperator, hessian_trace, spectral_density
from hf_subspace.eigensolvers import top_eigenpairs

PEERS = ("pyhessian", "hessian_eigenthings", "curvlinops")


def load_peers() -> dict[str, Any]:
    """The importable peers by module name (``None`` where missing)."""
    out: dict[str, Any] = {}
    for name in PEERS:
        try:
            out[name] = importlib.import_module(name)
        except ImportError as err:
            print(f"note: {name} not importable ({err}): its rows are skipped")
            out[name] = None
    return out


class TextLogitsOnly(torch.nn.Module):
    """``model(x) -> logits`` for a text model, ``x`` = token ids and attention mask stacked as ``[n, 2, length]``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=x[:, 0], attention_mask=x[:, 1]).logits


def logits_only(model: torch.nn.Module) -> torch.nn.Module:
    """The ``model(inputs) -> logits`` module the peers call: :class:`TextLogitsOnly` for a text model."""
    return TextLogitsOnly(model) if hasattr(model.config, "vocab_size") else LogitsOnly(model)


def peer_data(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """One Hessian batch as the peers' ``(inputs, labels)``."""
    if "input_ids" in batch:
        return torch.stack([batch["input_ids"], batch["attention_mask"]], dim=1), batch["labels"]
    return batch["pixel_values"], batch["labels"]


class Counter:
    """Counts Hessian-vector products by wrapping a callable (``columns`` gives the count of one call)."""

    def __init__(self, fn: Callable[..., Any], columns: Callable[..., int] = lambda *a, **k: 1) -> None:
        self.fn, self.columns, self.count = fn, columns, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.count += self.columns(*args, **kwargs)
        return self.fn(*args, **kwargs)


def _torch_eig(matrix: torch.Tensor, eigenvectors: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The removed ``torch.eig`` for a symmetric matrix: eigenvalues as ``[n, 2]`` (real, imaginary), vectors."""
    values, vectors = torch.linalg.eigh(matrix)
    return torch.stack([values, torch.zeros_like(values)], dim=1), vectors


# -- one task per tool: each returns (result dict, HVPs) ---------------------------------------------------------
def pyhessian_run(peers: dict[str, Any], model: torch.nn.Module, data: tuple, task: str, args: argparse.Namespace):
    """PyHessian's single-batch mode (graph built once in the constructor, which is timed too)."""
    module = importlib.import_module("pyhessian.hessian")  # the module (the package exports the class by that name)
    counter = Counter(module.hessian_vector_product)
    module.hessian_vector_product = counter
    torch.manual_seed(args.seed)  # PyHessian draws from the global generator
    try:
        h = module.hessian(logits_only(model), PaperMSE(), data=data, cuda=False)
        if task == "topk":
            values, vectors = h.eigenvalues(maxIter=100, tol=1e-3, top_n=args.k)
            flat = torch.stack([torch.cat([t.detach().reshape(-1) for t in v]) for v in vectors], dim=1)
            out = {"values": torch.tensor(values), "vectors": flat}
        elif task == "trace":
            out = {"estimate": float(np.mean(h.trace(maxIter=100, tol=1e-3)))}
        else:
            torch.eig = _torch_eig  # type: ignore[attr-defined]  # removed from torch (1.9), PyHessian's density calls it
            nodes, weights = h.density(iter=args.density_steps, n_v=1)
            out = {"mean": float(np.sum(np.asarray(nodes[0]) * np.asarray(weights[0])))}
    finally:
        module.hessian_vector_product = counter.fn
        model.zero_grad(set_to_none=True)  # PyHessian leaves create_graph gradients behind
    return out, counter.count


def eigenthings_run(peers: dict[str, Any], model: torch.nn.Module, data: tuple, task: str, args: argparse.Namespace):
    he = peers["hessian_eigenthings"]
    op = he.HessianOperator(logits_only(model), [data], he.supervised_loss(PaperMSE()))
    counter = Counter(op.matvec)
    op.matvec = counter
    if task.startswith("topk"):
        steps = 2 * args.k if task == "topk" else 4 * args.k
        res = he.lanczos(op, k=args.k, max_iter=steps, which="LA", seed=args.seed)
        out = {"values": res.eigenvalues.detach().clone(), "vectors": res.eigenvectors.T.contiguous()}
    elif task == "trace":
        res = he.trace(op, num_matvecs=args.trace_matvecs, method="hutch++", seed=args.seed)
        out = {"estimate": float(res.estimate), "stderr": float(res.stderr)}
    else:
        res = he.spectral_density(op, num_runs=1, lanczos_steps=args.density_steps, seed=args.seed)
        out = {"mean": float((res.raw_eigenvalues * res.raw_weights).sum() / res.raw_weights.sum())}
    return out, counter.count


def curvlinops_run(peers: dict[str, Any], model: torch.nn.Module, data: tuple, task: str, args: argparse.Namespace):
    cl = peers["curvlinops"]
    n = len(data[1])
    if task == "topk":
        v0 = np.random.default_rng(args.seed).standard_normal(bu.num_params(model)).astype(np.float32)
        solve = curvlinops_eigsh(cl, model, [data], n, args.k, 1e-3, v0, wrap=logits_only)
        return {"values": solve.eigenvalues, "vectors": solve.vectors}, solve.hvps
    wrapper = logits_only(model)
    params = [p for p in wrapper.parameters() if p.requires_grad]
    op = cl.HessianLinearOperator(wrapper, PaperMSE(), params, [data], check_deterministic=False, num_data=n)
    counter = Counter(op._matmat, lambda m: int(m[0].shape[-1]))
    op._matmat = counter
    torch.manual_seed(args.seed)
    if task == "trace":
        from curvlinops.trace.meyer2020hutch import hutchpp_trace

        return {"estimate": float(hutchpp_trace(op, args.trace_matvecs))}, counter.count
    from curvlinops.papyan2020traces.spectrum import lanczos_approximate_spectrum

    grid, density = lanczos_approximate_spectrum(op, args.density_steps)
    grid, density = np.asarray(grid, dtype=np.float64), np.asarray(density, dtype=np.float64)
    return {"mean": float(np.trapezoid(grid * density, grid) / np.trapezoid(density, grid))}, counter.count


def library_run(op: HessianOperator, task: str, args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    before = op.num_matvecs
    if task == "topk":
        res = top_eigenpairs(op, args.k, seed=args.seed)
        out: dict[str, Any] = {"values": res.eigenvalues, "vectors": res.eigenvectors}
    elif task == "trace":
        estimate, error = hessian_trace(op, args.trace_matvecs, seed=args.seed)
        out = {"estimate": estimate, "stderr": error}
    else:
        _, _, nodes, weights = spectral_density(op, 1, args.density_steps, seed=args.seed, return_quadrature=True)
        ok = ~np.isnan(nodes)
        out = {"mean": float((nodes[ok] * weights[ok]).sum() / weights[ok].sum())}
    return out, op.num_matvecs - before


# -- evaluation ----------------------------------------------------------------------------------------------
def topk_quality(op: HessianOperator, out: dict[str, Any], ref: Any, k: int) -> dict[str, Any]:
    """Largest relative residual and eigenvalue error of the returned pairs, and whether the set is wrong."""
    values = out["values"].double().reshape(-1)[:k]
    vectors = out["vectors"].to(op.dtype)[:, :k]
    vectors = vectors / vectors.norm(dim=0, keepdim=True)
    order = torch.argsort(values, descending=True)
    values, vectors = values[order], vectors[:, order]
    hv = op.matmat(vectors).double()
    residual = (hv - vectors.double() * values).norm(dim=0) / values.abs()
    q, _ = torch.linalg.qr(vectors.double())
    err = ((values - ref.eigenvalues[:k].double()).abs() / ref.eigenvalues[:k].double().abs()).max()
    return {
        "residual": float(residual.max()),
        "eig_err": float(err),
        "wrong": wrong(q, ref.eigenvalues, ref.eigenvectors, k),
    }


def run_setup(name: str, args: argparse.Namespace, peers: dict[str, Any]) -> dict[str, Any]:
    if name == "bert":
        model, batches = robustness_build("bert", args.quick, args.bert_samples, args.seed)
        model.eval()
        batches = bu.make_batches({k: v for k, v in batches[0].items() if k != "labels"}, batches[0]["labels"], 10**9)
    else:
        model, batches = build(name, args.samples, args.batch_size, args.seed, args.quick)
    data = peer_data(batches[0])
    op = HessianOperator(model, batches)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = top_eigenpairs(op, args.k + 4, tol=1e-4, max_basis_vectors=60, seed=12345)
    ref_trace, ref_error = hessian_trace(op, args.ref_trace_matvecs, seed=999)
    tools: dict[str, Callable[[str], tuple[dict[str, Any], int]]] = {
        "hf-subspace": lambda task: library_run(op, task, args)
    }
    if peers["pyhessian"]:
        tools["PyHessian 0.1 (single batch)"] = lambda task: pyhessian_run(peers, model, data, task, args)
    if peers["hessian_eigenthings"]:
        tools["hessian-eigenthings 1.0.0a5"] = lambda task: eigenthings_run(peers, model, data, task, args)
    if peers["curvlinops"]:
        tools["curvlinops 3.0.1"] = lambda task: curvlinops_run(peers, model, data, task, args)
    rows: list[dict[str, Any]] = []
    for task in ("topk", "trace", "density"):
        for tool, fn in tools.items():
            variants = [task]
            if task == "topk" and tool.startswith("hessian-eigenthings"):
                variants.append("topk-tuned")
            for variant in variants:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    runs = [bu.timed(lambda v=variant, f=fn: f(v), torch.device("cpu")) for _ in range(args.repeats)]
                out, hvps = runs[-1].result
                row = {"task": task, "tool": tool + (", max_iter 4k" if variant == "topk-tuned" else ""), "hvps": hvps}
                row["wall"] = bu.summarize([r.wall for r in runs])
                row["cpu"] = bu.summarize([r.cpu for r in runs])
                if task == "topk":
                    row.update(topk_quality(op, out, ref, args.k))
                elif task == "trace":
                    row.update(estimate=out["estimate"], rel_err=abs(out["estimate"] - ref_trace) / abs(ref_trace))
                else:
                    row.update(
                        mean=out["mean"], rel_err=abs(out["mean"] - ref_trace / op.dim) / abs(ref_trace / op.dim)
                    )
                rows.append(row)
                print(f"{name} {task}: {row['tool']}: {hvps} HVPs, {row['wall']['median']:.2f} s")
    for row in rows:
        base = next(r for r in rows if r["task"] == row["task"] and r["tool"] == "hf-subspace")
        row["ratio"] = row["wall"]["median"] / base["wall"]["median"]
        row["ratio_cpu"] = row["cpu"]["median"] / base["cpu"]["median"]
    top = ", ".join(f"{v:.4g}" for v in ref.eigenvalues.tolist())
    return {"d": op.dim, "reference": top, "trace": (ref_trace, ref_error), "rows": rows}


def print_tables(results: dict[str, Any], args: argparse.Namespace) -> None:
    for name, res in results.items():
        trace, error = res["trace"]
        print(
            f"\n{name}: d = {res['d']}, reference top-{args.k + 4}: {res['reference']}; trace {trace:.5g} ± {error:.2g}"
        )
        header = ["task", "tool", "HVPs", "wall s", "CPU s", "CPU s / HVP", "× hf-subspace (CPU)", "quality"]
        table = []
        for r in res["rows"]:
            if r["task"] == "topk":
                quality = f"max residual {r['residual']:.1e}, eig. err {r['eig_err']:.1e}" + (
                    ", WRONG SET" if r["wrong"] else ""
                )
            elif r["task"] == "trace":
                quality = f"{r['estimate']:.5g} (rel. err {r['rel_err']:.1e})"
            else:
                quality = f"mean λ {r['mean']:.4g} (rel. err vs trace/d {r['rel_err']:.1e})"
            cells = [r["task"], r["tool"], r["hvps"], bu.fmt_stat(r["wall"]), bu.fmt_stat(r["cpu"])]
            cells.append(bu.fmt_num(r["cpu"]["median"] / max(1, r["hvps"])))
            table.append([*cells, f"{r['ratio_cpu']:.2f}×", quality])
        print(bu.markdown_table(header, table))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bu.add_common_args(p, "peers.json")
    p.add_argument("--setups", nargs="+", default=["mnist", "cifar", "bert"], choices=["mnist", "cifar", "bert"])
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--bert-samples", type=int, default=128, help="SST-2 sentences of the bert setup (one batch)")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--trace-matvecs", type=int, default=99)
    p.add_argument("--ref-trace-matvecs", type=int, default=300)
    p.add_argument("--density-steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    bu.setup_process(args.threads)
    if args.quick:
        args.samples = args.batch_size = 64
        args.k, args.trace_matvecs, args.ref_trace_matvecs, args.density_steps, args.repeats = 3, 12, 30, 10, 1
    env = bu.environment_info(torch.device("cpu"))
    peers = load_peers()
    results = {name: run_setup(name, args, peers) for name in args.setups}
    print_tables(results, args)
    payload = {"benchmark": "peers", "environment": bu.finish_environment(env), "args": vars(args)}
    payload["results"] = results
    bu.write_json(bu.output_path(args, "peers.json"), payload)
    return payload


if __name__ == "__main__":
    main()
