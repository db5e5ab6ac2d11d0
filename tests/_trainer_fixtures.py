"""A small real classification task (scikit-learn digits) and an MLP for trainer tests."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from datasets import Dataset
from torch import nn


class DigitsMLP(nn.Module):
    """64-h-10 tanh MLP with ½·Σ MSE on one-hot targets (the paper's loss); optional dropout uses the RNG.

    ``unused=True`` adds a 7-element parameter that the forward never uses (created last: the other weights keep
    their values).
    """

    def __init__(self, hidden: int = 16, dropout: float = 0.0, unused: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, 10)
        if unused:  # a trainable parameter the forward never touches (never gets a gradient)
            self.unused = nn.Parameter(torch.randn(7))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        logits = self.fc2(self.drop(torch.tanh(self.fc1(x))))
        out: dict[str, Any] = {"logits": logits}
        if labels is not None:
            target = nn.functional.one_hot(labels, 10).to(logits.dtype)
            out["loss"] = 0.5 * ((logits - target) ** 2).sum(-1).mean()
        return out


def digits_dataset(n: int = 500) -> Dataset:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x[:n] / 16.0).astype(np.float32)
    return Dataset.from_dict({"x": x, "labels": y[:n].astype(np.int64)})


def base_args(output_dir: str, **overrides: Any) -> dict[str, Any]:
    """Deterministic, quiet CPU settings shared by the trainer tests."""
    args: dict[str, Any] = {
        "output_dir": output_dir,
        "max_steps": 8,
        "per_device_train_batch_size": 50,
        "learning_rate": 0.1,
        "optim": "sgd",
        "lr_scheduler_type": "constant",
        "max_grad_norm": 0.0,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "seed": 0,
        "data_seed": 0,
        "disable_tqdm": True,
        "subspace_k": 5,
        "hessian_num_samples": 200,
        "hessian_batch_size": 100,
        "dataloader_num_workers": 0,
    }
    args.update(overrides)
    return args


def losses(log_history: list[dict[str, Any]]) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in log_history if "loss" in h}
