"""Two-process worker: the SubspaceTrainer's per-step schedule (its callback's hooks, a fake trainer state, SGD) on an
FSDP2 (``fully_shard``) model, and the same driver run unsharded in one process as the reference (the test)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import TrainerControl, TrainerState

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _reference import classification_batches
from _trainer_fixtures import base_args
from worker_core import problem_in

from hf_subspace import HessianOperator, SubspaceTrainingArguments
from hf_subspace._fsdp import vector_layout
from hf_subspace.callback import SubspaceCallback
from hf_subspace.trainer import load_subspace_state, save_subspace_state

#: The schedules driven: full pipeline (refreshes by finite differences) in float64, and a float32 run resumed from
#: the reference's basis (no refresh: the projections, χ_k and effective learning rates on their own).
RUNS: dict[str, dict[str, Any]] = {
    "dominant_update": {"subspace_mode": "dominant", "subspace_target": "update", "subspace_start_step": 1},
    "bulk_gradient": {
        "subspace_mode": "bulk",
        "subspace_target": "gradient",
        "subspace_refresh_steps": 2,
        "subspace_alignment_steps": 0,
    },
    "resumed_float32": {"subspace_mode": "bulk", "subspace_target": "update", "subspace_refresh_steps": 100},
}
STEPS, BATCH, LR, HESSIAN_BATCHES = 3, 20, 0.2, 4
#: Steps of the float32 run before its checkpoint (the reference's) and after it (both).
RESUME_AT = 1


def arguments(out: str, run: str) -> SubspaceTrainingArguments:
    settings = {"subspace_k": 3, "subspace_refresh_steps": 3, "subspace_alignment_steps": 1, "max_steps": STEPS}
    if run != "resumed_float32":
        settings["subspace_solver_tol"] = 1e-8
    return SubspaceTrainingArguments(**base_args(out, **{**settings, **RUNS[run]}))


def drive(
    run: str,
    args: SubspaceTrainingArguments,
    *,
    world: int = 1,
    rank: int = 0,
    start: int = 0,
    steps: int = STEPS,
    checkpoint: str | None = None,
    weights: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Build the operator and callback on the unsharded model (as SubspaceTrainer does), shard it when ``world``
    > 1 (as accelerate's FSDP2 plugin does inside train()), and run ``steps`` SGD steps through the callback's hooks.

    Returns the losses, the full parameters after each step, the logged metrics, the callback and the operator.
    """
    dtype = torch.float32 if run == "resumed_float32" else torch.float64
    model, hessian = problem_in(dtype)
    if weights is not None:
        model.load_state_dict(weights)
    train = classification_batches([BATCH] * (start + steps), (12,), n_out=4, seed=7, dtype=dtype)
    op = HessianOperator(model, hessian[:HESSIAN_BATCHES][rank::world])
    logs: list[dict[str, float]] = []
    callback = SubspaceCallback(op, op.params, args, logs.append, param_names=op.param_names)
    if world > 1:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for module in model.children():
            fully_shard(module, mesh=mesh)
        fully_shard(model, mesh=mesh)
    momentum = 0.9 if run == "bulk_gradient" else 0.0
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=momentum)
    if checkpoint is not None:  # as SubspaceTrainer._load_from_checkpoint: after sharding, before train begin
        callback.follow_sharding()
        callback.load_state_dict(load_subspace_state(checkpoint, vector_layout(op), torch.device("cpu")))
    # The resumed float32 run stops short of its last step, whose final measurement would refresh the basis: its
    # basis stays the reference's, so what it compares is the projections alone.
    end = start + steps + (1 if run == "resumed_float32" else 0)
    state, control = TrainerState(max_steps=end, logging_steps=1), TrainerControl()
    state.global_step = start
    callback.on_train_begin(args, state, control)
    out: dict[str, Any] = {"losses": [], "params": [], "fsdp": op.fsdp, "rows": op.local_rows}
    for step in range(start, start + steps):
        batch = {k: v.chunk(world)[rank] for k, v in train[step].items()}  # FSDP2 averages the ranks' gradients
        optimizer.zero_grad(set_to_none=True)
        loss = model(**batch)["loss"]
        loss.backward()
        mean = loss.detach().reshape(1).double() / world
        if world > 1:
            dist.all_reduce(mean)
        out["losses"].append(float(mean.item()))
        callback.on_pre_optimizer_step(args, state, control)
        optimizer.step()
        callback.on_optimizer_step(args, state, control)
        state.global_step += 1
        control.should_log = True
        callback.on_step_end(args, state, control)
        out["params"].append([_full(p) for p in callback.params])
    out.update(logs=logs, callback=callback, operator=op)
    return out


def _full(p: torch.Tensor) -> torch.Tensor:
    full = getattr(p, "full_tensor", None)
    return (full() if callable(full) else p).detach().clone()


def main(out_dir: str) -> None:
    out = Path(out_dir)
    results: dict[str, Any] = {}
    for run in RUNS:
        args = arguments(str(out / run), run)  # joins the gloo group of both processes (use_cpu)
        world, rank = dist.get_world_size(), dist.get_rank()
        assert world == 2, f"expected 2 processes, got {world}"
        resumed = run == "resumed_float32"
        kwargs: dict[str, Any] = {}
        if resumed:  # continue the reference run from its checkpoint (saved whole, by one process)
            saved = torch.load(out / "reference" / "weights.pt", weights_only=True)
            kwargs = {"start": RESUME_AT, "steps": STEPS - RESUME_AT, "checkpoint": str(out / "reference")}
            kwargs["weights"] = saved
        began = time.perf_counter()
        r = drive(run, args, world=world, rank=rank, **kwargs)
        print(f"rank {rank} {run}: {time.perf_counter() - began:.1f} s", flush=True)
        st, layout = r["callback"].state, vector_layout(r["operator"])
        folder = out / run / "checkpoint"
        save_subspace_state(str(folder), st.state_dict(), layout, main=rank == 0)
        dist.barrier()
        reloaded = load_subspace_state(str(folder), layout, torch.device("cpu"))  # the same sharding: its own file
        results[run] = {
            "world": world,
            "fsdp": r["fsdp"],
            "rows": r["rows"],
            "losses": r["losses"],
            "params": r["params"],
            "logs": r["logs"],
            "basis": st.basis.vectors.clone(),
            "eigenvalues": st.basis.eigenvalues,
            "reload_equal": torch.equal(reloaded["basis"]["vectors"], st.basis.vectors)
            and torch.equal(reloaded["warm_start"], st.warm_start),
        }
    torch.save(results, out / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
