"""Two-process worker: SubspaceTrainer (bulk mode) under torchrun with half the per-device batch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _trainer_fixtures import DigitsMLP, base_args, digits_dataset, losses

from hf_subspace import SubspaceTrainer, SubspaceTrainingArguments

RUN = {
    "subspace_mode": "bulk",
    "subspace_start_step": 2,
    "subspace_alignment_steps": 2,
    "max_steps": 6,
    "subspace_refresh_steps": 2,
    "optim_args": "momentum=0.9",
}


#: The unused-parameter run (issue 15 item 3): a parameter that never gets a gradient, DDP told to find it.
UNUSED_RUN = {**RUN, "max_steps": 4, "ddp_find_unused_parameters": True}


#: Split solver vectors (the default with 2 processes) against whole ones, and checkpoints of the split run.
VARIANTS: dict[str, dict] = {
    "whole": {"subspace_shard_vectors": False},
    # The trace needs whole vectors (a second operator); subspace_graph_cache_bytes=0 must reach it too.
    "save": {"save_strategy": "steps", "save_steps": 3, "subspace_trace_steps": 3, "subspace_graph_cache_bytes": 0},
    "resume": {"save_strategy": "steps", "save_steps": 3},
}


def run(
    output_dir: str, per_device_batch: int, unused: bool = False, resume: str | None = None, **overrides: object
) -> SubspaceTrainer:
    torch.manual_seed(0)
    settings = {**(UNUSED_RUN if unused else RUN), **overrides}
    args = SubspaceTrainingArguments(**base_args(output_dir, per_device_train_batch_size=per_device_batch, **settings))
    trainer = SubspaceTrainer(model=DigitsMLP(unused=unused), args=args, train_dataset=digits_dataset(500))
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def main(out_dir: str, variant: str = "plain") -> None:
    unused = variant == "unused"
    model_before = None
    resume = str(Path(out_dir, "checkpoint-3")) if variant == "resume" else None
    trainer = run(out_dir, 25, unused=unused, resume=resume, **VARIANTS.get(variant, {}))
    assert trainer.hessian_operator.shards_vectors == (variant != "whole")
    world = dist.get_world_size()
    assert world == 2, f"expected 2 processes, got {world}"
    history = trainer.state.log_history
    record = {
        "world": world,
        "losses": losses(history),
        "full_loss": {h["step"]: h["subspace/full_train_loss"] for h in history if "subspace/full_train_loss" in h},
        "minibatch_chi": [h["subspace/chi_k_minibatch_grad"] for h in history if "subspace/chi_k_minibatch_grad" in h],
        "eigenvalues": trainer.subspace_state.basis.eigenvalues.tolist(),
        "trace_steps": [h["step"] for h in history if "hessian_trace" in h],
    }
    trace = [c.operator for c in trainer.callback_handler.callbacks if type(c).__name__ == "HessianTraceCallback"]
    if trace:  # graphs built per product pass and per batch (equal when nothing was kept)
        built = trace[0].num_graphs_built
        record["trace_graphs"] = [built, trace[0].num_passes * sum(n > 0 for n in trace[0].batch_items)]
    if unused:
        torch.manual_seed(0)
        model_before = DigitsMLP(unused=True)
        record["unused_fixed"] = bool(torch.equal(trainer.model.unused.detach().cpu(), model_before.unused.detach()))
    Path(out_dir, f"rank{dist.get_rank()}_{variant}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(*sys.argv[1:])
