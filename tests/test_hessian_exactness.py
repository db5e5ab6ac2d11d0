"""The operator computes the Hessian of the loss the Trainer optimises, on every kind of input a user brings.

Token-level losses weighted by loss items (batch size, processes), ``compute_loss_func`` with ``num_items_in_batch``,
tuple outputs, a cache that cannot go stale, passes without side effects on BatchNorm, full precision under mixed
precision, non-finite values refused, and the vectorised block product. Each against an independent reference in
float64.
"""

from __future__ import annotations

import copy
from pathlib import Path
from types import MethodType
from typing import Any

import numpy as np
import pytest
import torch
from _reference import TanhMLP, classification_batches
from _token_fixtures import collate, lm_batches, sequences, tiny_gpt2, token_mean_loss_and_hessian
from _torchrun import torchrun_two
from torch import nn
from torch.func import functional_call

from hf_subspace import HessianOperator
from hf_subspace._params import flatten, select_parameters, split_like

WORKERS = Path(__file__).resolve().parent / "distributed"


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((torch.linalg.norm(a - b) / torch.linalg.norm(b)).item())


def _block(dim: int, m: int = 3, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(dim, m, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


@pytest.fixture(scope="module")
def lm_reference() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    model = tiny_gpt2()
    return (model, *token_mean_loss_and_hessian(model))


# -- 1. token-level losses: the mean over all loss items, whatever the batching --------------------------------------
def test_token_level_loss_is_the_mean_over_all_items_for_every_batch_size(lm_reference) -> None:
    model, loss, grad, dense = lm_reference
    block = _block(dense.shape[0])
    products = {}
    for batch_size in (1, 4, 6):  # 1: one sequence per batch (one with a single target); 4: uneven last batch
        op = HessianOperator(model, lm_batches(batch_size))
        assert op.num_items == sum(len(s) - 1 for s in sequences()) and op.num_samples == 6
        products[batch_size] = op.matmat(block)
        assert _rel(products[batch_size], dense @ block) <= 1e-10, batch_size
        value, gradient = op.loss_and_gradient()
        assert value == pytest.approx(loss.item(), rel=1e-12) and _rel(gradient, grad) <= 1e-10
    assert _rel(products[1], products[6]) <= 1e-10


def test_stock_causal_lm_loss_and_sequence_weighting_would_differ(lm_reference) -> None:
    """The stock transformers loss (float32 upcast inside) agrees to float32 precision; the old per-sequence
    weighting is measurably different, so the exact test above can fail."""
    model, loss, _grad, dense = lm_reference
    stock = tiny_gpt2(exact=False)
    block = _block(dense.shape[0])
    assert _rel(HessianOperator(stock, lm_batches(1)).matmat(block), dense @ block) <= 1e-5
    per_sequence = HessianOperator(model, lm_batches(1), num_items_fn=lambda batch: len(batch["labels"]))
    assert per_sequence.loss() != pytest.approx(loss.item(), rel=1e-3)


@pytest.mark.distributed
def test_token_level_two_processes_match_one(tmp_path, lm_reference) -> None:
    _model, loss, grad, dense = lm_reference
    torchrun_two([str(WORKERS / "worker_tokens.py"), str(tmp_path)], {"OMP_NUM_THREADS": "1"})
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["local_items"] != r1["local_items"]  # uneven token counts per rank: weighting by items matters
    block = _block(dense.shape[0])
    assert torch.equal(r0["hv"], r1["hv"]) and _rel(r0["hv"], dense @ block) <= 1e-10
    assert r0["loss"] == pytest.approx(loss.item(), rel=1e-12) and _rel(r0["grad"], grad) <= 1e-10
    assert r0["num_items"] == sum(len(s) - 1 for s in sequences())


def test_loss_fn_may_report_its_item_count() -> None:
    """A user loss_fn returning (mean, num_items) is weighted by that count, not by the batch's samples."""
    model, _, _, _ = tiny_gpt2(), None, None, None
    reference = HessianOperator(model, lm_batches(6))

    def loss_fn(m: nn.Module, batch: dict) -> tuple[torch.Tensor, int]:
        logits = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]
        mean = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=-100)
        return mean, int((targets != -100).sum())

    op = HessianOperator(model, lm_batches(1), loss_fn)
    block = _block(op.dim)
    assert _rel(op.matmat(block), reference.matmat(block)) <= 1e-10
    assert op.loss() == pytest.approx(reference.loss(), rel=1e-12)


# -- the SubspaceTrainer's Hessian: its own loss, num_items_in_batch, exact projections ------------------------------
def _trainer_args(tmp_path: Path, **overrides: Any) -> Any:
    from _trainer_fixtures import base_args

    from hf_subspace import SubspaceTrainingArguments

    return SubspaceTrainingArguments(**base_args(str(tmp_path), **overrides))


def test_trainer_hessian_of_a_causal_lm_is_the_token_mean(tmp_path, lm_reference) -> None:
    from datasets import Dataset

    from hf_subspace import SubspaceTrainer

    model, loss, _grad, dense = lm_reference
    data = Dataset.from_dict({"input_ids": sequences(), "labels": sequences()})

    def collator(features: list[dict]) -> dict:
        return collate([f["input_ids"] for f in features])

    block = _block(dense.shape[0])
    for batch_size in (1, 6):
        args = _trainer_args(
            tmp_path, subspace_k=2, hessian_num_samples=6, hessian_batch_size=batch_size, per_device_train_batch_size=3
        )
        trainer = SubspaceTrainer(model=model, args=args, train_dataset=data, data_collator=collator)
        op = trainer.hessian_operator
        assert _rel(op.matmat(block), dense @ block) <= 1e-10, batch_size
        assert op.loss() == pytest.approx(loss.item(), rel=1e-12)
        assert args.average_tokens_across_devices  # switched off only inside the Hessian pass


class UpdateRecorder:
    """Callback recording, per optimizer step, whether it projected and χ_k / bulk fraction of the applied update."""

    def __init__(self, trainer: Any) -> None:
        self.trainer, self.records = trainer, []

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        st = self.trainer.subspace_state
        self.before = [p.detach().clone() for p in self.trainer.subspace_params]
        self.basis, self.projecting = st.basis, st.projecting

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.basis is not None:
            delta = [p.detach() - b for p, b in zip(self.trainer.subspace_params, self.before)]
            self.records.append((self.projecting, self.basis.dominant_fraction(delta), self.basis.bulk_fraction(delta)))

    def __getattr__(self, name: str) -> Any:  # the other TrainerCallback events: nothing to do
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)


def _digits_float64(n: int = 300) -> Any:
    from datasets import Dataset
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return Dataset.from_dict({"x": (x[:n] / 16.0).tolist(), "labels": y[:n].astype(np.int64).tolist()})


def _collate_float64(features: list[dict]) -> dict:
    return {
        "x": torch.tensor([f["x"] for f in features], dtype=torch.float64),
        "labels": torch.tensor([f["labels"] for f in features]),
    }


def _summed_cross_entropy(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
    return nn.functional.cross_entropy(outputs["logits"], labels, reduction="sum") / num_items_in_batch


@pytest.mark.parametrize("mode", ["dominant", "bulk"])
def test_compute_loss_func_with_num_items_in_batch(tmp_path, mode) -> None:
    from _trainer_fixtures import DigitsMLP

    from hf_subspace import SubspaceTrainer

    torch.manual_seed(0)
    model = DigitsMLP(hidden=4).double()
    args = _trainer_args(
        tmp_path,
        subspace_mode=mode,
        subspace_k=3,
        subspace_start_step=2,
        subspace_refresh_steps=2,
        max_steps=5,
        gradient_accumulation_steps=2,
        per_device_train_batch_size=25,
        hessian_num_samples=120,
        hessian_batch_size=50,  # 50, 50, 20: unequal batches
    )
    data = _digits_float64()
    trainer = SubspaceTrainer(
        model=model,
        args=args,
        train_dataset=data,
        data_collator=_collate_float64,
        compute_loss_func=_summed_cross_entropy,
    )
    # The Hessian is of the mean cross-entropy over the Hessian set (dense reference, before training).
    batches = trainer.hessian_operator.batches
    full = {"x": torch.cat([b["x"] for b in batches]), "labels": torch.cat([b["labels"] for b in batches])}
    named = select_parameters(model)
    names, params = [n for n, _ in named], [p.detach() for _, p in named]

    def mean_ce(flat: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, dict(zip(names, split_like(flat, params))), args=(), kwargs={"x": full["x"]})
        return nn.functional.cross_entropy(logits["logits"], full["labels"])

    dense = torch.func.hessian(mean_ce)(flatten(params))
    block = _block(dense.shape[0])
    assert _rel(trainer.hessian_operator.matmat(block), dense @ block) <= 1e-10
    recorder = UpdateRecorder(trainer)
    trainer.add_callback(recorder)
    trainer.train()
    projected = [r for r in recorder.records if r[0]]
    assert len(projected) == 3 and all(chi > 1e-2 and bulk > 1e-2 for p, chi, bulk in recorder.records if not p)
    for _, chi, bulk in projected:
        assert (bulk <= 1e-8 and chi > 0.99) if mode == "dominant" else chi <= 1e-8


# -- 3. tuple outputs and models without a loss -----------------------------------------------------------------------
class TupleNet(nn.Module):
    """Returns ``(loss, logits)`` with labels and ``(logits,)`` without, like transformers' ``return_dict=False``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 7)
        self.fc2 = nn.Linear(7, 3)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        logits = self.fc2(torch.tanh(self.fc1(x)))
        if labels is None:
            return (logits,)
        return nn.functional.cross_entropy(logits, labels), logits


def test_tuple_outputs_follow_the_trainer_convention() -> None:
    torch.manual_seed(0)
    model = TupleNet().double()
    batches = classification_batches([4, 7], (5,))
    op = HessianOperator(model, batches)
    x, labels = torch.cat([b["x"] for b in batches]), torch.cat([b["labels"] for b in batches])
    named = select_parameters(model)
    names, params = [n for n, _ in named], [p.detach() for _, p in named]

    def mean_ce(flat: torch.Tensor) -> torch.Tensor:
        (logits,) = functional_call(model, dict(zip(names, split_like(flat, params))), args=(), kwargs={"x": x})
        return nn.functional.cross_entropy(logits, labels)

    dense = torch.func.hessian(mean_ce)(flatten(params))
    block = _block(op.dim)
    assert _rel(op.matmat(block), dense @ block) <= 1e-10
    assert op.loss() == pytest.approx(float(mean_ce(flatten(params))), rel=1e-12)


@pytest.mark.parametrize(
    ("outputs", "expected"),
    [
        (lambda logits: logits, r"a Tensor of shape \(2, 3\)"),
        (lambda logits: (logits,), r"a tuple of 1 element\(s\) \(Tensor\(2, 3\)\)"),
        (lambda logits: {"logits": logits}, r"a dict with keys \['logits'\]"),
    ],
)
def test_no_loss_says_what_the_model_returned(outputs, expected) -> None:
    class NoLoss(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(5, 3)

        def forward(self, x: torch.Tensor, labels: torch.Tensor) -> Any:
            return outputs(self.fc(x))

    op = HessianOperator(NoLoss(), classification_batches([2], (5,), dtype=torch.float32))
    with pytest.raises(ValueError, match=expected):
        op.loss()


# -- 4. the loss/gradient cache cannot go stale ------------------------------------------------------------------------
class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 8)
        self.bn = nn.BatchNorm1d(8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.fc2(torch.tanh(self.bn(self.fc1(x))))
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


def test_cache_follows_every_parameter_and_buffer() -> None:
    torch.manual_seed(0)
    model = TanhMLP().double()
    batches = classification_batches([4, 6], (5,))
    op = HessianOperator(model, batches, parameter_filter=r"^fc2\.")
    first = op.loss_and_gradient()
    passes = op.num_passes
    assert op.loss_and_gradient()[0] == first[0] and op.num_passes == passes  # unchanged: reused

    def check_fresh() -> None:
        fresh = HessianOperator(model, batches, parameter_filter=r"^fc2\.").loss_and_gradient()
        value, grad = op.loss_and_gradient()
        assert value == pytest.approx(fresh[0], rel=1e-14) and torch.allclose(grad, fresh[1], rtol=1e-12)
        assert op.loss() == pytest.approx(fresh[0], rel=1e-14)

    with torch.no_grad():
        model.fc1.weight.mul_(1.5)  # an uncovered, earlier layer
    check_fresh()
    assert op.loss() != pytest.approx(first[0], rel=1e-6)
    model.fc1.bias.data = model.fc1.bias.data + 0.5  # replaced storage, no version bump
    check_fresh()
    batches[0]["x"].mul_(2.0)  # the data changed in place
    check_fresh()

    bn_model = BNNet().double()
    bn_batches = classification_batches([6, 5], (5,))
    op = HessianOperator(bn_model, bn_batches)
    before = op.loss_and_gradient()
    bn_model.train()
    bn_model(torch.randn(16, 5, dtype=torch.float64) * 3 + 1, torch.zeros(16, dtype=torch.long))  # updates stats
    after = op.loss_and_gradient()
    fresh = HessianOperator(bn_model, bn_batches).loss_and_gradient()
    assert after[0] == pytest.approx(fresh[0], rel=1e-14) and after[0] != pytest.approx(before[0], rel=1e-6)


# -- 5. train-mode passes leave the model unchanged ----------------------------------------------------------------------
def test_train_mode_passes_leave_batchnorm_untouched_and_use_batch_statistics() -> None:
    torch.manual_seed(0)
    model = BNNet().double()
    batches = classification_batches([6, 5], (5,))
    model.train()
    model(torch.randn(8, 5, dtype=torch.float64), torch.zeros(8, dtype=torch.long))  # non-trivial running stats
    state = {k: v.clone() for k, v in model.state_dict().items()}
    op = HessianOperator(model, batches, eval_mode=False)
    block = _block(op.dim)
    hv = op.matmat(block)
    op._cache = None  # force real passes for loss() and loss_and_gradient()
    value = op.loss()
    op._cache = None
    value2, _grad = op.loss_and_gradient()
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[key]), key  # running_mean/var and num_batches_tracked bit-identical
    assert model.training and model.bn.training
    # Reference: the train-mode loss (each batch normalised with its own statistics) on a copy, by autograd.
    ref_model = copy.deepcopy(model)
    named = select_parameters(ref_model)
    names, params = [n for n, _ in named], [p.detach() for _, p in named]

    def train_loss(flat: torch.Tensor) -> torch.Tensor:
        values = dict(zip(names, split_like(flat, params)))
        out = sum(len(b["labels"]) * functional_call(ref_model, values, args=(), kwargs=b)["loss"] for b in batches)
        return out / 11

    dense = torch.autograd.functional.hessian(train_loss, flatten(params))
    assert _rel(hv, dense @ block) <= 1e-10
    assert value == pytest.approx(float(train_loss(flatten(params))), rel=1e-12) and value2 == pytest.approx(value)
    # ... which differs from the default eval-mode Hessian (running statistics).
    assert _rel(HessianOperator(model, batches).matmat(block), hv) > 1e-3


# -- 6. full precision whatever wraps the forward --------------------------------------------------------------------
def test_products_are_full_precision_after_bf16_training(tmp_path) -> None:
    from _trainer_fixtures import DigitsMLP, digits_dataset

    from hf_subspace import SubspaceTrainer

    torch.manual_seed(0)
    args = _trainer_args(tmp_path, bf16=True, subspace_mode="bulk", subspace_start_step=2, max_steps=3)
    trainer = SubspaceTrainer(model=DigitsMLP(), args=args, train_dataset=digits_dataset(300))
    trainer.train()
    model = trainer.model
    assert "forward" in model.__dict__  # accelerate's autocast wrapper is in place
    reference = DigitsMLP()
    reference.load_state_dict(model.state_dict())  # fp32 copy at the same weights, plain forward
    op = trainer.hessian_operator
    batch = op.batches[0]
    wrapped_logits = model(x=batch["x"])["logits"]
    assert _rel(wrapped_logits, reference(x=batch["x"])["logits"]) > 1e-4  # the wrapper really computes in bf16
    block = _block(op.dim, dtype=torch.float32)
    fp32 = HessianOperator(reference, op.batches)
    assert _rel(op.matmat(block), fp32.matmat(block)) <= 1e-6
    assert op.loss_and_gradient()[0] == pytest.approx(fp32.loss_and_gradient()[0], rel=1e-6)
    assert model.__dict__["forward"] is not None and "forward" in model.__dict__  # wrapper restored


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_products_are_full_precision_under_an_accelerate_style_autocast_wrapper(dtype) -> None:
    from accelerate.utils import convert_outputs_to_fp32

    torch.manual_seed(0)
    model = TanhMLP(n_in=10, hidden=30, n_out=4)
    batches = classification_batches([8, 5], (10,), n_out=4, dtype=torch.float32)
    reference = copy.deepcopy(model)
    # What Accelerator.prepare_model does for native mixed precision (fp16 needs CUDA there; same mechanism).
    model._original_forward = model.forward
    autocast = torch.autocast(device_type="cpu", dtype=dtype)
    model.forward = MethodType(convert_outputs_to_fp32(autocast(model.forward.__func__)), model)
    assert _rel(model(**batches[0])["logits"], reference(**batches[0])["logits"]) > 1e-4
    op, ref = HessianOperator(model, batches), HessianOperator(reference, batches)
    block = _block(op.dim, dtype=torch.float32)
    with torch.autocast(device_type="cpu", dtype=dtype):  # an outer autocast too
        assert _rel(op.matmat(block), ref.matmat(block)) <= 1e-6


# -- 7. non-finite values are refused by every measurement --------------------------------------------------------------
@pytest.mark.parametrize("where", ["parameter", "data"])
def test_non_finite_loss_and_gradient_raise(where) -> None:
    torch.manual_seed(0)
    model = TanhMLP().double()
    batches = classification_batches([4, 6], (5,))
    if where == "parameter":
        with torch.no_grad():
            model.fc2.bias[0] = float("inf")
    else:
        batches[1]["x"][2, 3] = float("nan")
    for call in (
        lambda op: op.loss(),
        lambda op: op.loss_and_gradient(),
        lambda op: op.matvec(torch.ones(op.dim, dtype=torch.float64)),
    ):
        with pytest.raises(FloatingPointError, match="not finite"):
            call(HessianOperator(model, batches))


# -- 8. the vectorised block product equals the column loop ------------------------------------------------------------
def test_batched_block_product_equals_the_loop(lm_reference) -> None:
    from _reference import SmallCNN

    torch.manual_seed(0)
    cases = [
        (TanhMLP().double(), classification_batches([4, 7, 1], (5,))),  # unused + frozen parameters
        (SmallCNN().double(), classification_batches([3, 2], (2, 6, 6))),
        (lm_reference[0], lm_batches(4)),
    ]
    for model, batches in cases:
        loop = HessianOperator(model, batches, block_product="loop")
        batched = HessianOperator(model, batches, block_product="batched")
        auto = HessianOperator(model, batches)
        block = _block(loop.dim, m=4)
        expected = loop.matmat(block)
        assert _rel(batched.matmat(block), expected) <= 1e-12, type(model).__name__
        assert torch.equal(auto.matmat(block), expected) and auto._block_method is None  # CPU: the loop
    with pytest.raises(ValueError, match="block_product"):
        HessianOperator(cases[0][0], cases[0][1], block_product="vmap")  # type: ignore[arg-type]
