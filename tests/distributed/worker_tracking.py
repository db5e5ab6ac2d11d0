"""Two-process worker: SubspaceTrainer with certified tracking (subspace_basis_tol) under torchrun.

Also holds the small float64 problem of ``tests/test_tracking.py`` (its dense Hessian is cheap: d = 75).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _trainer_fixtures import base_args, losses

from hf_subspace import SubspaceTrainer, SubspaceTrainingArguments


class Blobs64(nn.Module):
    """8-6-3 tanh MLP in float64, ½·Σ MSE to one-hot targets (d = 75)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 6, dtype=torch.float64)
        self.fc2 = nn.Linear(6, 3, dtype=torch.float64)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        logits = self.fc2(torch.tanh(self.fc1(x.to(torch.float64))))
        out: dict[str, Any] = {"logits": logits}
        if labels is not None:
            target = nn.functional.one_hot(labels, 3).to(logits.dtype)
            out["loss"] = 0.5 * ((logits - target) ** 2).sum(-1).mean()
        return out


def blobs_dataset(n: int = 200) -> Any:
    """Three Gaussian blobs in 8 dimensions (float64 features)."""
    from datasets import Dataset

    g = np.random.default_rng(0)
    means = g.normal(size=(3, 8)) * 1.5
    y = g.integers(0, 3, n)
    x = means[y] + g.normal(size=(n, 8))
    return Dataset.from_dict({"x": x, "labels": y.astype(np.int64)})


TRACKED = {
    "subspace_mode": "bulk",
    "subspace_k": 3,
    "subspace_start_step": 0,
    "subspace_refresh_steps": 50,
    "subspace_basis_tol": 0.05,
    "subspace_alignment_steps": 0,
    "learning_rate": 0.2,
    "max_steps": 150,
    "logging_steps": 10,
    "hessian_num_samples": 200,
}


def pretrained_model(steps: int = 300, lr: float = 0.2) -> Blobs64:
    """:class:`Blobs64` after ``steps`` of full-batch gradient descent (past the fast early changes of the Hessian)."""
    torch.manual_seed(0)
    model = Blobs64()
    data = blobs_dataset()
    x, y = torch.tensor(np.asarray(data["x"])), torch.tensor(np.asarray(data["labels"]))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        model(x, y)["loss"].backward()
        opt.step()
    return model


def tracked_trainer(output_dir: str, model: nn.Module | None = None, **overrides: Any) -> SubspaceTrainer:
    torch.manual_seed(0)
    args = SubspaceTrainingArguments(**base_args(output_dir, **{**TRACKED, **overrides}))
    return SubspaceTrainer(model=model or Blobs64(), args=args, train_dataset=blobs_dataset())


PARITY = {"max_steps": 40, "logging_steps": 1, "subspace_alignment_steps": 5}


def record(trainer: SubspaceTrainer) -> dict[str, Any]:
    """What must agree between ranks and with one process."""
    st = trainer.subspace_state
    assert st.tracker is not None
    history = trainer.state.log_history
    return {
        "losses": {str(k): v for k, v in losses(history).items()},
        "estimates": [h["subspace/basis_error_estimate"] for h in history if "subspace/basis_error_estimate" in h],
        "hvps_total": st.hvps_total,
        "refreshes": st.tracker.num_refreshes,
        "probes": st.tracker.num_probes,
        "last_refresh_step": st.tracker.last_refresh_step,
    }


def main(out_dir: str) -> None:
    import torch.distributed as dist

    trainer = tracked_trainer(out_dir, per_device_train_batch_size=25, **PARITY)
    trainer.train()
    assert dist.get_world_size() == 2, f"expected 2 processes, got {dist.get_world_size()}"
    Path(out_dir, f"rank{dist.get_rank()}.json").write_text(json.dumps(record(trainer)))


if __name__ == "__main__":
    main(*sys.argv[1:])
