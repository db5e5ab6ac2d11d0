"""A tiny causal LM with padded sequences of unequal length, and the dense Hessian of its token-mean loss."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from hf_subspace._params import flatten, select_parameters, split_like

LENGTHS = (2, 12, 5, 9, 3, 7)
VOCAB = 13


def causal_lm_loss_float64(
    logits: torch.Tensor,
    labels: torch.Tensor,
    vocab_size: int,
    num_items_in_batch: torch.Tensor | None = None,
    ignore_index: int = -100,
    **kwargs: Any,
) -> torch.Tensor:
    """transformers' causal-LM loss (shift by one, ``sum / num_items_in_batch`` or the mean) without its float32
    upcast of the logits, which would round a float64 model's loss and products to float32 precision."""
    targets = nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    reduction = "sum" if num_items_in_batch is not None else "mean"
    loss = nn.functional.cross_entropy(
        logits.reshape(-1, vocab_size), targets.reshape(-1), ignore_index=ignore_index, reduction=reduction
    )
    return loss / num_items_in_batch if num_items_in_batch is not None else loss


def tiny_gpt2(seed: int = 0, exact: bool = True) -> nn.Module:
    """A float64 GPT-2 from a tiny config; ``exact`` keeps its loss in float64 (see causal_lm_loss_float64)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=12,
        n_embd=8,
        n_layer=1,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).double()
    if exact:
        model.loss_function = causal_lm_loss_float64
    return model


def sequences(seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, VOCAB, (n,), generator=g).tolist() for n in LENGTHS]


def collate(seqs: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence of the batch; labels = input_ids with -100 on padding."""
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def lm_batches(batch_size: int, seqs: Sequence[Sequence[int]] | None = None) -> list[dict[str, torch.Tensor]]:
    seqs = sequences() if seqs is None else seqs
    return [collate(seqs[s : s + batch_size]) for s in range(0, len(seqs), batch_size)]


def token_mean_loss_and_hessian(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss, gradient and dense Hessian (reverse over reverse) of the mean next-token cross-entropy over all
    non-padding targets of all sequences, computed from the logits by hand (one padded batch of everything)."""
    named = select_parameters(model)
    names = [n for n, _ in named]
    params = [p.detach() for _, p in named]
    batch = collate(sequences())

    def loss(flat: torch.Tensor) -> torch.Tensor:
        values = dict(zip(names, split_like(flat, params)))
        kwargs: dict[str, Any] = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        logits = functional_call(model, values, args=(), kwargs=kwargs).logits
        targets = batch["labels"][:, 1:]
        per_token = nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, VOCAB), targets.reshape(-1), ignore_index=-100, reduction="sum"
        )
        return per_token / (targets != -100).sum()

    was_training = model.training
    model.eval()
    try:
        flat = flatten(params).requires_grad_(True)
        value = loss(flat)
        (grad,) = torch.autograd.grad(value, flat)
        hessian = torch.autograd.functional.hessian(loss, flatten(params), vectorize=True)
    finally:
        model.train(was_training)
    return value.detach(), grad, hessian
