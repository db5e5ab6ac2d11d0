"""Finite-difference and FSDP2 Hessian-vector products on a GPU, and SubspaceTrainer under accelerate's FSDP2 plugin.

Run by ``benchmarks/gpu_fsdp2.sh``: under ``torchrun`` (nccl on CUDA, gloo on CPU for a dry run) for the products and
the FSDP2 trainer run, then once more without a launcher for the unsharded trainer run it is compared with. Writes
(``--out``, default ``$OUT``) ``fsdp2.json`` / ``trainer_fsdp2.json`` / ``trainer_plain.json`` and prints them:

* ``products``: the relative error of finite-difference products against the exact double-backward product of the
  same unsharded model, for a BERT-style classifier with fused SDPA attention (no double backward there) and with
  the math kernel; the same for its ``fully_shard`` copy, the top-k eigenvalues, whether θ is bitwise unchanged;
* ``trainer``: ``SubspaceTrainer`` with ``fsdp=True, fsdp_config={"version": 2}`` (bulk mode, a refresh every two
  steps, a checkpoint at step 2 resumed by a second trainer): whether accelerate sharded the model (DTensor
  parameters, FSDP2 products), the losses and subspace metrics, and the resumed losses.

accelerate applies its FSDP plugin only to a distributed GPU run, i.e. under a launcher that sets ``LOCAL_RANK``
(``torchrun``, ``accelerate launch``), one GPU included (world size 1); a plain ``python`` process on one GPU, and any
CPU run, trains unsharded (``trainer_fsdp2.json`` then says ``"sharded": false``). ``--quick`` (implied by
``DEVICE=cpu``) shrinks the model for a CPU dry run.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import torch
import torch.distributed as dist
from transformers import BertConfig, BertForSequenceClassification

from hf_subspace import HessianOperator, top_eigenpairs

#: (hidden size, layers, sequence length, batch size, k): the GPU size, and a tiny one for the CPU dry run.
SIZES = {"gpu": (128, 2, 48, 32, 5), "quick": (16, 1, 8, 4, 2)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("all", "products", "trainer"), default="all")
    parser.add_argument("--no-fsdp", action="store_true", help="the trainer run without fsdp (the reference)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a CPU dry run)")
    parser.add_argument("--out", default=os.environ.get("OUT", ""), help="folder for the JSON results")
    args = parser.parse_args(argv)
    args.quick = args.quick or os.environ.get("DEVICE", "cuda") != "cuda" or not torch.cuda.is_available()
    args.size = SIZES["quick" if args.quick else "gpu"]
    return args


def _model(size: tuple[int, ...], device: torch.device, attention: str) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=1000,
        hidden_size=size[0],
        num_hidden_layers=size[1],
        num_attention_heads=4,
        intermediate_size=2 * size[0],
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    config._attn_implementation = attention
    return BertForSequenceClassification(config).to(device)


def _examples(size: tuple[int, ...], n: int, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(0, 1000, (n, size[2]), generator=gen),
        "labels": torch.randint(0, 2, (n,), generator=gen),
    }


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).double().norm() / b.double().norm()).item())


def products(size: tuple[int, ...], device: torch.device) -> dict[str, Any]:
    """Finite-difference and FSDP2 products and eigenvalues against the exact unsharded ones (every rank runs it)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    data = _examples(size, 4 * size[3])
    batches = [{k: v[i::4].to(device) for k, v in data.items()} for i in range(4)][rank::world]
    rows: dict[str, Any] = {"device": str(device), "world": world, "torch": torch.__version__}
    exact_op = HessianOperator(_model(size, device, "eager"), batches)  # math attention: exact double backward
    block = torch.randn(exact_op.dim, 4, generator=torch.Generator().manual_seed(2)).to(device)
    exact = exact_op.matmat(block)
    for attention in ("eager", "sdpa"):
        start = time.perf_counter()
        fd = HessianOperator(_model(size, device, attention), batches, product="finite_difference").matmat(block)
        rows[f"fd_{attention}_rel_error"] = _rel(fd, exact)
        rows[f"fd_{attention}_seconds"] = time.perf_counter() - start
    sharded = _model(size, device, "sdpa")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world,))
    for layer in sharded.bert.encoder.layer:
        fully_shard(layer, mesh=mesh)
    fully_shard(sharded, mesh=mesh)
    op = HessianOperator(sharded, batches)
    before = [p.to_local().detach().clone() for p in op.params]
    here = op.local_rows.to(device)
    rows["fsdp2_rel_error_local_rows"] = _rel(op.matmat(block[here]), exact[here])
    values = top_eigenpairs(op, size[4], method="lobpcg", tol=1e-3, seed=0).eigenvalues
    reference = top_eigenpairs(exact_op, size[4], method="lobpcg", tol=1e-3, seed=0).eigenvalues
    rows["fsdp2_top_k_rel_error"] = _rel(values, reference)
    rows["fsdp2_theta_bitwise"] = all(torch.equal(p.to_local(), b) for p, b in zip(op.params, before))
    return rows


def trainer_run(
    size: tuple[int, ...], folder: str, fsdp: bool, cuda: bool, resume: str | None = None
) -> dict[str, Any]:
    """SubspaceTrainer (bulk mode, refresh every 2 steps, checkpoint at step 2) with or without the FSDP2 plugin."""
    from datasets import Dataset
    from torch.distributed.tensor import DTensor

    from hf_subspace import SubspaceTrainer, SubspaceTrainingArguments

    data = _examples(size, 8 * size[3], seed=3)
    dataset = Dataset.from_dict({k: v.tolist() for k, v in data.items()})
    sharding = {"fsdp": True, "fsdp_config": {"version": 2, "transformer_layer_cls_to_wrap": ["BertLayer"]}}
    args = SubspaceTrainingArguments(
        output_dir=folder,
        max_steps=4,
        per_device_train_batch_size=size[3],
        learning_rate=0.05,
        optim="sgd",
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        logging_steps=1,
        save_strategy="steps",
        save_steps=2,
        report_to="none",
        use_cpu=not cuda,
        seed=0,
        data_seed=0,
        disable_tqdm=True,
        subspace_k=size[4],
        subspace_mode="bulk",
        subspace_start_step=1,
        subspace_refresh_steps=2,
        hessian_num_samples=2 * size[3],
        hessian_batch_size=size[3],
        **(sharding if fsdp else {}),
    )
    trainer = SubspaceTrainer(model=_model(size, torch.device("cpu"), "sdpa"), args=args, train_dataset=dataset)
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume)
    op, history = trainer.hessian_operator, trainer.state.log_history
    basis = trainer.subspace_basis
    return {
        "fsdp_requested": fsdp,
        "sharded": isinstance(next(trainer.model.parameters()), DTensor),
        "fsdp_enabled": bool(getattr(trainer, "is_fsdp_enabled", False)),
        "model_wrapped": type(trainer.model_wrapped).__name__,
        "world": trainer.args.world_size,
        "product": op.product,
        "dim": op.dim,
        "basis_local_rows": None if basis is None else basis.local_dim,
        "seconds": time.perf_counter() - start,
        "losses": {h["step"]: h["loss"] for h in history if "loss" in h},
        "subspace": {h["step"]: {k: v for k, v in h.items() if k.startswith("subspace/")} for h in history},
    }


def _write(out: str, name: str, rows: dict[str, Any]) -> None:
    text = json.dumps(rows, indent=1, default=str)
    print(text)
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, name), "w", encoding="utf-8") as fh:
            fh.write(text)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cuda = torch.cuda.is_available() and os.environ.get("DEVICE", "cuda") == "cuda"
    launched = "LOCAL_RANK" in os.environ
    if args.part != "products" and not args.no_fsdp and not launched:
        raise SystemExit("The FSDP2 trainer run needs a launcher (torchrun, as gpu_fsdp2.sh does); or pass --no-fsdp.")
    if launched and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if args.part in ("all", "products") and launched:
        rows = products(args.size, device)
        if rank == 0:
            _write(args.out, "fsdp2.json", rows)
    if args.part in ("all", "trainer"):
        fsdp = not args.no_fsdp
        name = "fsdp2" if fsdp else "plain"
        scratch = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"hfsub-fsdp2-{name}")
        rows = trainer_run(args.size, scratch, fsdp, cuda)
        resumed = trainer_run(args.size, scratch + "-resumed", fsdp, cuda, f"{scratch}/checkpoint-2")
        rows["resumed_losses"] = resumed["losses"]
        if rank == 0:
            _write(args.out, f"trainer_{name}.json", rows)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
