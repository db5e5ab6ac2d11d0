"""`SubspaceTrainerMixin` with `Seq2SeqTrainer` and TRL's `SFTTrainer`, and `SubspaceTrainer` on a peft LoRA model.

Tiny models from configs, offline; the Hessian is checked against a float64 reference of the trainer's own loss and
every applied update after the switch against the projection.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pytest
import torch
from _token_fixtures import causal_lm_loss_float64
from _trainer_fixtures import base_args
from datasets import Dataset
from test_trainer_patterns import reference_products, token_ce_sum, word_tokenizer
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

from hf_subspace import SubspaceTrainer, SubspaceTrainerMixin, SubspaceTrainingArguments

VOCAB = 16


def texts(n: int = 24) -> list[str]:
    return [" ".join(f"t{2 + (i * 3 + j) % (VOCAB - 2)}" for j in range(6 + i % 4)) for i in range(n)]


def run_settings(output_dir: str, **overrides: Any) -> dict[str, Any]:
    settings = base_args(output_dir, max_steps=4, per_device_train_batch_size=4, learning_rate=0.05,
                         subspace_mode="bulk", subspace_k=2, subspace_start_step=1, hessian_num_samples=12,
                         hessian_batch_size=4, subspace_refresh_steps=100)  # fmt: skip
    settings.update(overrides)
    return settings


def check_products_and_projection(trainer: Any, shift: bool, tol: float = 1e-10) -> None:
    op = trainer.hessian_operator
    vectors = torch.randn(op.dim, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = reference_products(trainer.model, op.batches, lambda out, b: token_ce_sum(out, b, shift), vectors)
    assert (op.matmat(vectors) - expected).norm() <= tol * expected.norm()
    trainer.train()
    chi = [h["subspace/chi_k_update"] for h in trainer.state.log_history if "subspace/chi_k_update" in h]
    assert len(chi) == 4 and max(chi[1:]) < 1e-6  # bulk from step 1: no part of the update in the subspace


@dataclasses.dataclass
class SubspaceSeq2SeqArguments(SubspaceTrainingArguments, Seq2SeqTrainingArguments):
    pass


class SubspaceSeq2SeqTrainer(SubspaceTrainerMixin, Seq2SeqTrainer):
    pass


def test_seq2seq_trainer_with_the_mixin(tmp_path: Any) -> None:
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=VOCAB, d_model=8, d_kv=4, d_ff=8, num_layers=1, num_heads=2, decoder_start_token_id=0,
                      pad_token_id=0, eos_token_id=1, attn_implementation="eager")  # fmt: skip
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(config).double()
    tokenizer = word_tokenizer(VOCAB)
    source, target = texts(), texts(30)[6:]
    data = Dataset.from_dict({"input_ids": tokenizer(source)["input_ids"], "labels": tokenizer(target)["input_ids"]})
    from transformers import DataCollatorForSeq2Seq

    args = SubspaceSeq2SeqArguments(**run_settings(str(tmp_path)), predict_with_generate=False)
    trainer = SubspaceSeq2SeqTrainer(model=model, args=args, train_dataset=data,
                                     data_collator=DataCollatorForSeq2Seq(tokenizer, model=model))  # fmt: skip
    check_products_and_projection(trainer, shift=False, tol=1e-6)  # T5's layer norm computes in float32


def test_trl_sft_trainer_with_the_mixin(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    """TRL computes its loss with a chunked log-prob kernel without double backward; the Hessian takes the model's
    own loss, checked equal to TRL's on the first batch."""
    trl = pytest.importorskip("trl")
    from transformers import GPT2Config, GPT2LMHeadModel

    @dataclasses.dataclass
    class SubspaceSFTConfig(SubspaceTrainingArguments, trl.SFTConfig):
        pass

    class SubspaceSFTTrainer(SubspaceTrainerMixin, trl.SFTTrainer):
        pass

    tokenizer = word_tokenizer(VOCAB)
    tokenizer.eos_token = "t2"
    config = GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=8, n_layer=1, n_head=2, attn_implementation="eager",
                        bos_token_id=2, eos_token_id=2)  # fmt: skip
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).double()
    model.loss_function = causal_lm_loss_float64  # transformers' own rounds the logits to float32
    args = SubspaceSFTConfig(**run_settings(str(tmp_path), remove_unused_columns=True), max_length=16)
    with caplog.at_level(logging.WARNING, logger="hf_subspace"):
        trainer = SubspaceSFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": texts()}),
                                     processing_class=tokenizer)  # fmt: skip
    assert any("model's own loss" in r.getMessage() for r in caplog.records)
    check_products_and_projection(trainer, shift=True)


def test_subspace_trainer_on_a_peft_lora_model_with_a_bf16_base(tmp_path: Any) -> None:
    """The covered parameters are the adapters; the bf16 base trains as loaded and is unchanged by the passes."""
    from _token_fixtures import collate, sequences, tiny_gpt2
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_gpt2(exact=False).to(torch.bfloat16), LoraConfig(r=2, target_modules=["c_attn"],
                                                                                 fan_in_fan_out=True))  # fmt: skip
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    seqs = sequences() * 4
    data = Dataset.from_dict({"input_ids": seqs})
    args = SubspaceTrainingArguments(**run_settings(str(tmp_path), remove_unused_columns=False))
    trainer = SubspaceTrainer(model=model, args=args, train_dataset=data,
                              data_collator=lambda rows: collate([r["input_ids"] for r in rows]))  # fmt: skip
    assert all("lora_" in n for n in trainer.subspace_param_names)
    trainer.train()
    chi = [h["subspace/chi_k_update"] for h in trainer.state.log_history if "subspace/chi_k_update" in h]
    assert max(chi[1:]) < 1e-5
    for n, p in model.named_parameters():
        if "lora_" not in n:
            assert p.dtype == torch.bfloat16 and torch.equal(p, base_before[n])
