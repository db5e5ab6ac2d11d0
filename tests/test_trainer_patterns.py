"""Everyday `transformers` training patterns under `SubspaceTrainer`, exact against float64 or plain-Trainer references.

Labels made by the collator (causal LM, masked LM), extractive QA, columns the model does not take, the global RNG,
LoRA on a bf16 base, the accepted forms of ``hessian_dataset``, parameters frozen late, CTC and MoE losses.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
from _token_fixtures import VOCAB, sequences, tiny_gpt2
from _trainer_fixtures import DigitsMLP, base_args, digits_dataset, losses
from datasets import Dataset
from torch import nn
from torch.func import functional_call
from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerFast, Trainer, TrainingArguments

from hf_subspace import HessianOperator, SubspaceTrainer, SubspaceTrainingArguments
from hf_subspace._params import flatten, select_parameters, split_like

LossSum = Callable[[Any, dict[str, torch.Tensor]], tuple[torch.Tensor, int]]


def word_tokenizer(vocab_size: int = VOCAB) -> PreTrainedTokenizerFast:
    """Tokens "t1" … by id; id 0 is padding, id 1 the mask token (offline, no Hub)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    vocab = {"[PAD]": 0, "[MASK]": 1, **{f"t{i}": i for i in range(2, vocab_size)}}
    backend = Tokenizer(WordLevel(vocab, unk_token="[MASK]"))
    backend.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", mask_token="[MASK]")


def reference_products(model: nn.Module, batches: Sequence[dict[str, torch.Tensor]], loss_sum: LossSum,
                       vectors: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """H V of Σ_b (loss sum of b) / Σ_b (items of b), by reverse-over-reverse on a hand-written float64 loss."""
    named = select_parameters(model)
    names, params = [n for n, _ in named], [p.detach() for _, p in named]
    was_training = model.training
    model.eval()

    def total(flat: torch.Tensor) -> torch.Tensor:
        values = dict(zip(names, split_like(flat, params)))
        sums, count = [], 0
        for batch in batches:
            inputs = {k: v for k, v in batch.items() if k not in ("labels", "start_positions", "end_positions")}
            s, n = loss_sum(functional_call(model, values, args=(), kwargs=inputs), batch)
            sums.append(s)
            count += n
        return torch.stack(sums).sum() / count

    try:
        flat = flatten(params)
        cols = [torch.autograd.functional.hvp(total, flat, v)[1] for v in vectors.T]
    finally:
        model.train(was_training)
    return torch.stack(cols, dim=1)


def token_ce_sum(outputs: Any, batch: dict[str, torch.Tensor], shift: bool) -> tuple[torch.Tensor, int]:
    logits, labels = outputs.logits, batch["labels"]
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum")
    return loss, int((labels != -100).sum())


def assert_products_match(trainer: SubspaceTrainer, loss_sum: LossSum, num_vectors: int = 3) -> None:
    op = trainer.hessian_operator
    vectors = torch.randn(op.dim, num_vectors, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = reference_products(trainer.model, op.batches, loss_sum, vectors)
    torch.testing.assert_close(op.matmat(vectors), expected, rtol=1e-9, atol=1e-11)


def lm_args(tmp_path: Any, **overrides: Any) -> SubspaceTrainingArguments:
    settings = base_args(str(tmp_path), per_device_train_batch_size=3, max_steps=2, subspace_k=2,
                         hessian_num_samples=100, hessian_batch_size=4, remove_unused_columns=True)  # fmt: skip
    settings.update(overrides)
    return SubspaceTrainingArguments(**settings)


# -- 1. labels made by the collator; extractive QA ------------------------------------------------------------------
def test_causal_lm_labels_made_by_the_collator(tmp_path: Any) -> None:
    """run_clm's pattern: input_ids / attention_mask only, DataCollatorForLanguageModeling(mlm=False) adds labels."""
    seqs = sequences()
    data = Dataset.from_dict({"input_ids": seqs, "attention_mask": [[1] * len(s) for s in seqs]})
    collator = DataCollatorForLanguageModeling(word_tokenizer(), mlm=False)
    trainer = SubspaceTrainer(model=tiny_gpt2(), args=lm_args(tmp_path), train_dataset=data, data_collator=collator)
    assert all("labels" in b for b in trainer.hessian_operator.batches)
    assert trainer.hessian_operator.num_items == sum(len(s) - 1 for s in seqs)  # the shifted tokens
    assert_products_match(trainer, lambda out, b: token_ce_sum(out, b, shift=True))


def tiny_bert(kind: str, seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    from transformers import BertConfig, BertForMaskedLM, BertForQuestionAnswering

    config = BertConfig(vocab_size=VOCAB, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=8, max_position_embeddings=16, attn_implementation="eager")  # fmt: skip
    torch.manual_seed(seed)
    cls = {"mlm": BertForMaskedLM, "qa": BertForQuestionAnswering}[kind]
    return cls(config).to(dtype)


def mlm_dataset() -> Dataset:
    seqs = [[2 + (i * 7 + j) % (VOCAB - 2) for j in range(10)] for i in range(12)]
    return Dataset.from_dict({"input_ids": seqs, "attention_mask": [[1] * len(s) for s in seqs]})


def test_masked_lm_labels_made_by_the_collator(tmp_path: Any) -> None:
    collator = DataCollatorForLanguageModeling(word_tokenizer(), mlm=True, mlm_probability=0.3)
    trainer = SubspaceTrainer(model=tiny_bert("mlm"), args=lm_args(tmp_path), train_dataset=mlm_dataset(),
                              data_collator=collator)  # fmt: skip
    assert trainer.hessian_operator.num_items == sum(int((b["labels"] != -100).sum()) for b in
                                                     trainer.hessian_operator.batches)  # fmt: skip
    assert_products_match(trainer, lambda out, b: token_ce_sum(out, b, shift=False))


def test_extractive_qa_with_start_and_end_positions(tmp_path: Any) -> None:
    seqs = [[2 + (i * 5 + j) % (VOCAB - 2) for j in range(8)] for i in range(10)]
    data = Dataset.from_dict({"input_ids": seqs, "attention_mask": [[1] * 8] * 10,
                              "start_positions": [i % 8 for i in range(10)],
                              "end_positions": [(i + 3) % 8 for i in range(10)]})  # fmt: skip

    def qa_sum(out: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        ce = nn.functional.cross_entropy
        start = ce(out.start_logits, batch["start_positions"], reduction="sum")
        return (start + ce(out.end_logits, batch["end_positions"], reduction="sum")) / 2, len(batch["input_ids"])

    trainer = SubspaceTrainer(model=tiny_bert("qa"), args=lm_args(tmp_path), train_dataset=data)
    assert trainer.hessian_operator.num_items == 10
    assert_products_match(trainer, qa_sum)


def test_batches_without_a_loss_are_refused_before_training(tmp_path: Any) -> None:
    data = mlm_dataset()  # no labels and a collator that makes none
    with pytest.raises(ValueError, match=r"give the model no loss.*DataCollatorForLanguageModeling"):
        SubspaceTrainer(model=tiny_bert("mlm"), args=lm_args(tmp_path), train_dataset=data)


# -- 2. columns the model's forward does not take -------------------------------------------------------------------
class ListDataset(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


def digits_rows(n: int = 300, extra: bool = True) -> list[dict[str, Any]]:
    data = digits_dataset(n).with_format("torch")
    return [{"x": r["x"], "labels": r["labels"], **({"example_id": i} if extra else {})} for i, r in enumerate(data)]


def digits_trainer(tmp_path: Any, name: str, train: Any = None, **kwargs: Any) -> SubspaceTrainer:
    args = SubspaceTrainingArguments(**base_args(str(tmp_path / name), subspace_mode="bulk", subspace_start_step=1,
                                                 max_steps=3))  # fmt: skip
    torch.manual_seed(0)
    train = ListDataset(digits_rows(extra=False)) if train is None else train
    return SubspaceTrainer(model=DigitsMLP(), args=args, train_dataset=train, **kwargs)


def _products(trainer: SubspaceTrainer) -> torch.Tensor:
    op = trainer.hessian_operator
    return op.matmat(torch.randn(op.dim, 2, generator=torch.Generator().manual_seed(0)))


def test_extra_columns_of_a_torch_dataset_are_removed_like_the_trainer_does(tmp_path: Any) -> None:
    trainer = digits_trainer(tmp_path, "extra", ListDataset(digits_rows()))
    assert all("example_id" not in b for b in trainer.hessian_operator.batches)
    clean = digits_trainer(tmp_path, "clean", ListDataset(digits_rows(extra=False)))
    torch.testing.assert_close(_products(trainer), _products(clean), rtol=0, atol=0)
    trainer.train()  # refreshes at steps 1..3 without "unexpected keyword argument 'example_id'"
    assert trainer.subspace_state.basis is not None


# -- 3. the global RNG is untouched ---------------------------------------------------------------------------------
def test_none_mode_with_an_mlm_collator_trains_like_the_plain_trainer(tmp_path: Any) -> None:
    collator = DataCollatorForLanguageModeling(word_tokenizer(), mlm=True, mlm_probability=0.3)
    settings = base_args(str(tmp_path / "plain"), per_device_train_batch_size=4, max_steps=3, learning_rate=0.5)
    plain_settings = {k: v for k, v in settings.items() if not k.startswith(("subspace_", "hessian_"))}
    plain = Trainer(model=tiny_bert("mlm", dtype=torch.float32), args=TrainingArguments(**plain_settings),
                    train_dataset=mlm_dataset(), data_collator=collator)  # fmt: skip
    plain.train()
    settings.update(output_dir=str(tmp_path / "sub"), subspace_mode="none", subspace_k=2, hessian_batch_size=4)
    sub = SubspaceTrainer(model=tiny_bert("mlm", dtype=torch.float32), args=SubspaceTrainingArguments(**settings),
                          train_dataset=mlm_dataset(), data_collator=collator)  # fmt: skip
    sub.train()
    assert losses(sub.state.log_history) == losses(plain.state.log_history)


def test_building_the_hessian_set_leaves_every_global_generator_as_it_was(tmp_path: Any) -> None:
    """After construction, Python's, NumPy's and torch's generators are where a plain Trainer's leave them."""
    import random

    import numpy as np
    from transformers import default_data_collator

    def generators_after(build: Callable[[], Any]) -> tuple[Any, ...]:
        build()
        return torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()

    settings = {k: v for k, v in base_args(str(tmp_path / "plain")).items() if not k.startswith(("subspace_", "hess"))}
    plain = generators_after(lambda: Trainer(model=DigitsMLP(), args=TrainingArguments(**settings)))
    loader = torch.utils.data.DataLoader(digits_dataset(200).with_format("torch"), batch_size=40, shuffle=True)
    collator = DataCollatorForLanguageModeling(word_tokenizer(), mlm=True, mlm_probability=0.3)

    def noisy(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:  # a random augmentation
        batch = default_data_collator(features)
        return {**batch, "x": batch["x"] + 0.01 * torch.randn_like(batch["x"])}

    for build in (lambda: digits_trainer(tmp_path, "noisy", data_collator=noisy),
                  lambda: digits_trainer(tmp_path, "rng", hessian_dataset=loader),
                  lambda: SubspaceTrainer(model=tiny_bert("mlm"), args=lm_args(tmp_path), train_dataset=mlm_dataset(),
                                          data_collator=collator)):  # fmt: skip
        sub = generators_after(build)
        assert torch.equal(plain[0], sub[0]) and plain[1] == sub[1] and np.array_equal(plain[2], sub[2])


# -- 4. LoRA on a bf16 base -----------------------------------------------------------------------------------------
def test_lora_on_a_bf16_base_has_fp32_products() -> None:
    """peft keeps the adapters in fp32; the frozen bf16 base must not make the products bf16 (was 1e-2 off)."""
    from peft import LoraConfig, get_peft_model

    base = tiny_gpt2(exact=False).float()
    lora = get_peft_model(base, LoraConfig(r=2, target_modules=["c_attn", "c_fc"], init_lora_weights=False,
                                           fan_in_fan_out=True))  # fmt: skip
    for name, p in lora.named_parameters():
        if "lora_" not in name:
            p.data = p.data.to(torch.bfloat16)  # the base as loaded with torch_dtype=bfloat16
    reference = copy.deepcopy(lora).double()  # the same (bf16-valued) weights, exactly, in float64
    from _token_fixtures import lm_batches

    batches = lm_batches(3)
    op = HessianOperator(lora, batches)
    assert op.dtype == torch.float32 and op.dim == sum(p.numel() for n, p in lora.named_parameters() if "lora_" in n)
    vectors = torch.randn(op.dim, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = reference_products(reference, batches, lambda out, b: token_ce_sum(out, b, shift=True), vectors)
    error = (op.matmat(vectors.float()).double() - expected).norm() / expected.norm()
    assert error < 1e-5, f"relative error {error:.2e}: products ran in bf16"
    assert all(p.dtype == torch.bfloat16 for n, p in lora.named_parameters() if "lora_" not in n)


# -- 10. forms of hessian_dataset; late freezing; CTC; MoE ----------------------------------------------------------
def hessian_forms() -> dict[str, Any]:
    from transformers import default_data_collator

    data = digits_dataset(200)
    torch_data = data.with_format("torch")
    return {
        "streaming": data.to_iterable_dataset(),
        "dataloader": torch.utils.data.DataLoader(torch_data, batch_size=40, shuffle=True),
        "collated_list": [default_data_collator([torch_data[i] for i in range(s, s + 50)]) for s in range(0, 200, 50)],
    }


@pytest.mark.parametrize("form", ["streaming", "dataloader", "collated_list"])
def test_hessian_dataset_forms_give_the_same_hessian(tmp_path: Any, form: str) -> None:
    reference = digits_trainer(tmp_path, "map", hessian_dataset=digits_dataset(200))
    trainer = digits_trainer(tmp_path, form, hessian_dataset=hessian_forms()[form])
    assert trainer.hessian_operator.num_samples == 200
    torch.testing.assert_close(_products(trainer), _products(reference), rtol=1e-5, atol=1e-6)


def test_unsupported_hessian_dataset_is_refused_with_the_accepted_forms(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match=r"hessian_dataset of type int is not supported.*DataLoader"):
        digits_trainer(tmp_path, "bad", hessian_dataset=42)


def test_parameters_frozen_after_the_trainer_is_built_are_refused(tmp_path: Any) -> None:
    trainer = digits_trainer(tmp_path, "frozen")
    trainer.model.fc1.weight.requires_grad_(False)
    with pytest.raises(ValueError, match=r"frozen \(\['fc1.weight'\]\).*before building the trainer"):
        trainer.train()


def test_ctc_loss_is_refused_before_training_with_what_to_do(tmp_path: Any) -> None:
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    config = Wav2Vec2Config(vocab_size=8, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=8, conv_dim=(4, 4), conv_stride=(4, 2), conv_kernel=(8, 4),
                            num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2, mask_time_prob=0.0,
                            pad_token_id=0, attn_implementation="eager")  # fmt: skip
    g = torch.Generator().manual_seed(0)
    data = Dataset.from_dict({"input_values": torch.randn(6, 200, generator=g).tolist(),
                              "labels": [[1, 2, 3]] * 6})  # fmt: skip
    with pytest.raises(RuntimeError, match=r"CTC loss.*no second derivative.*plain Trainer"):
        SubspaceTrainer(model=Wav2Vec2ForCTC(config), args=lm_args(tmp_path), train_dataset=data)


def test_moe_router_auxiliary_loss_is_announced(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(vocab_size=VOCAB, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, num_local_experts=2, num_experts_per_tok=1,
                           output_router_logits=True, router_aux_loss_coef=0.02, attn_implementation="eager")  # fmt: skip
    seqs = sequences()
    data = Dataset.from_dict({"input_ids": seqs})
    with caplog.at_level(logging.WARNING, logger="hf_subspace"):
        SubspaceTrainer(model=MixtralForCausalLM(config), args=lm_args(tmp_path, per_device_train_batch_size=1),
                        train_dataset=data, data_collator=DataCollatorForLanguageModeling(word_tokenizer(), mlm=False))  # fmt: skip
    assert any("router auxiliary loss" in r.getMessage() and "hessian_batch_size" in r.getMessage()
               for r in caplog.records)  # fmt: skip


# -- resume of a transformers model whose module names were renamed (ViT) -------------------------------------------
class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_vit_resume_loads_the_weights_without_key_warnings(tmp_path: Any) -> None:
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=8, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=8, num_labels=3, attn_implementation="eager")  # fmt: skip
    g = torch.Generator().manual_seed(0)
    data = Dataset.from_dict({"pixel_values": torch.randn(24, 3, 8, 8, generator=g).tolist(),
                              "labels": torch.randint(0, 3, (24,), generator=g).tolist()}).with_format("torch")  # fmt: skip
    settings = base_args(str(tmp_path), per_device_train_batch_size=6, max_steps=4, subspace_k=2, subspace_mode="bulk",
                         subspace_start_step=1, hessian_num_samples=12, save_strategy="steps", save_steps=2)  # fmt: skip

    def trainer() -> SubspaceTrainer:
        torch.manual_seed(0)
        return SubspaceTrainer(model=ViTForImageClassification(config), args=SubspaceTrainingArguments(**settings),
                               train_dataset=data)  # fmt: skip

    first = trainer()
    first.train()
    records, ours = _Records(), logging.getLogger("hf_subspace")
    level = ours.level
    ours.setLevel(logging.INFO)
    for name in ("transformers", "hf_subspace"):
        logging.getLogger(name).addHandler(records)
    try:
        resumed = trainer()
        resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    finally:
        ours.setLevel(level)
        for name in ("transformers", "hf_subspace"):
            logging.getLogger(name).removeHandler(records)
    assert not [m for m in records.messages if "missing keys" in m or "unexpected keys" in m]
    assert any(m.startswith("Resumed the model's") for m in records.messages)
    for (name, p), q in zip(first.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
