"""Dense references and small models shared by the tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from hf_subspace._params import flatten, select_parameters, split_like


def dense_hessian(model: nn.Module, batches: Sequence[dict[str, Any]], method: str = "func") -> torch.Tensor:
    """Hessian of the sample-weighted mean of ``model(**batch)["loss"]``.

    ``method="func"`` uses ``torch.func.hessian`` (forward over reverse mode), ``"autograd"`` uses
    ``torch.autograd.functional.hessian`` (reverse over reverse). The latter is needed for transformers' BERT, whose
    forward-over-reverse Hessian came out 0.3 % asymmetric in torch 2.13 (the reverse-over-reverse one is symmetric
    to 1e-16).
    """
    named = select_parameters(model)
    names = [n for n, _ in named]
    params = [p.detach() for _, p in named]
    sizes = [len(b["labels"]) for b in batches]
    total = float(sum(sizes))

    def mean_loss(flat: torch.Tensor) -> torch.Tensor:
        values = dict(zip(names, split_like(flat, params)))
        out = 0.0
        for n, batch in zip(sizes, batches):
            outputs = functional_call(model, values, args=(), kwargs=batch)
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs.loss
            out = out + n * loss
        return out / total

    was_training = model.training
    model.eval()
    try:
        if method == "autograd":
            return torch.autograd.functional.hessian(mean_loss, flatten(params))
        return torch.func.hessian(mean_loss)(flatten(params))
    finally:
        model.train(was_training)


class LinearRegression(nn.Module):
    """Linear model with MSE loss (quadratic: the Hessian is 2/N Σ [x;1][x;1]ᵀ per output)."""

    def __init__(self, n_in: int = 6, n_out: int = 3) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        pred = self.linear(x)
        return {"loss": ((pred - labels) ** 2).sum(-1).mean(), "logits": pred}


class TanhMLP(nn.Module):
    """MLP with tanh and cross-entropy, plus an unused and a frozen parameter."""

    def __init__(self, n_in: int = 5, hidden: int = 7, n_out: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.unused = nn.Parameter(torch.randn(4))
        self.fc2 = nn.Linear(hidden, n_out)
        self.frozen = nn.Parameter(torch.randn(n_out), requires_grad=False)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.fc2(torch.tanh(self.fc1(x))) + self.frozen
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


class SmallCNN(nn.Module):
    """Conv → ReLU → max-pool → linear, MSE against one-hot targets."""

    def __init__(self, channels: int = 3, n_out: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, channels, 3, padding=1)
        self.head = nn.Linear(channels * 3 * 3, n_out)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        h = nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
        logits = self.head(h.flatten(1))
        target = nn.functional.one_hot(labels, logits.shape[-1]).to(logits.dtype)
        return {"loss": 0.5 * ((logits - target) ** 2).sum(-1).mean(), "logits": logits}


def regression_batches(sizes: Sequence[int], n_in: int = 6, n_out: int = 3, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "x": torch.randn(n, n_in, generator=g, dtype=torch.float64),
            "labels": torch.randn(n, n_out, generator=g, dtype=torch.float64),
        }
        for n in sizes
    ]


def classification_batches(
    sizes: Sequence[int], shape: Sequence[int], n_out: int = 3, seed: int = 0, dtype: torch.dtype = torch.float64
) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [
        {"x": torch.randn(n, *shape, generator=g, dtype=dtype), "labels": torch.randint(0, n_out, (n,), generator=g)}
        for n in sizes
    ]


def projector(vectors: torch.Tensor) -> torch.Tensor:
    return vectors @ vectors.T


def subspace_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖P_a − P_b‖₂ for orthonormal bases a, b."""
    return float(torch.linalg.matrix_norm(projector(a) - projector(b), ord=2).item())
