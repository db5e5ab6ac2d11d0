#!/usr/bin/env python
"""Train a causal language model with dominant- or bulk-subspace projected updates.

One linear script in the style of transformers' ``examples/pytorch/language-modeling/run_clm.py``: copy it and edit
what you need. It uses hf-subspace's public API only: ``SubspaceTrainingArguments`` (every ``TrainingArguments``
option plus the ``subspace_*`` / ``hessian_*`` ones) and ``SubspaceTrainer`` (a drop-in ``Trainer``). The Hessian is
of the token-level loss the Trainer optimises: the mean next-token cross-entropy over all target tokens of the
Hessian set; the labels are made by ``DataCollatorForLanguageModeling(mlm=False)``.

    # fine-tune a Hub checkpoint on a Hub dataset
    python examples/run_subspace_clm.py --model_name_or_path openai-community/gpt2 \\
        --dataset_name Salesforce/wikitext --dataset_config_name wikitext-2-raw-v1 \\
        --output_dir runs/gpt2-bulk --max_steps 1000 --learning_rate 1e-4 --per_device_train_batch_size 8 \\
        --subspace_mode bulk --subspace_k 4 --subspace_start_step 100 \\
        --subspace_basis_tol 0.05 --subspace_refresh_steps 200 --hessian_num_samples 64 --hessian_batch_size 8

    # offline: a tiny GPT-2 from a config and a word-level tokenizer trained on the text, on the SST-2 sentences
    python examples/run_subspace_clm.py --model_type gpt2 \\
        --config_overrides n_embd=64,n_layer=2,n_head=2,n_positions=64 \\
        --train_file ../shared/data/sst2/train.tsv --validation_file ../shared/data/sst2/dev.tsv \\
        --text_column sentence --block_size 32 --output_dir runs/tiny-gpt2-bulk --max_steps 300 --optim sgd \\
        --learning_rate 0.1 --subspace_mode bulk --subspace_k 4 --subspace_start_step 50 \\
        --subspace_basis_tol 0.05 --subspace_refresh_steps 50 --hessian_num_samples 128

``--subspace_basis_tol`` refreshes the top-k basis only when needed to keep it within that distance of the exact
eigenspace (``--subspace_refresh_steps`` is then the longest interval). The steps, in order: parse the arguments →
load the data (``datasets.load_dataset``) → tokenizer (the model's, or one trained on the text) and model (a
checkpoint, or a fresh one from ``--model_type`` and ``--config_overrides``) → tokenize and cut into blocks of
``--block_size`` tokens → ``SubspaceTrainer(...).train()`` → ``evaluate()`` (perplexity) → ``create_model_card()``.
Offline, set ``HF_HUB_OFFLINE=1`` and pass local paths.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

from datasets import load_dataset
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    HfArgumentParser,
    PreTrainedTokenizerFast,
    set_seed,
)

from hf_subspace import SubspaceTrainer, SubspaceTrainingArguments

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    """Which model and tokenizer to train."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A Hub checkpoint or a local folder; leave out to train from scratch."}
    )
    model_type: str = field(default="gpt2", metadata={"help": "Architecture of a model trained from scratch."})
    config_overrides: str | None = field(
        default=None, metadata={"help": "Config settings of a model from scratch, e.g. n_embd=64,n_layer=2."}
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={"help": "Tokenizer (Hub name or folder); default: the model's, or one trained on the text."},
    )
    tokenizer_vocab_size: int = field(
        default=2000, metadata={"help": "Vocabulary size of a word-level tokenizer trained on the training text."}
    )


@dataclass
class DataArguments:
    """Which text to train and evaluate on."""

    dataset_name: str | None = field(default=None, metadata={"help": "A Hub dataset, e.g. Salesforce/wikitext."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration."})
    train_file: str | None = field(default=None, metadata={"help": "Local training text: .txt, .csv, .tsv, .json."})
    validation_file: str | None = field(default=None, metadata={"help": "Local validation text (same formats)."})
    text_column: str = field(default="text", metadata={"help": "The column holding the text (.txt: 'text')."})
    block_size: int = field(default=64, metadata={"help": "Training sequences are blocks of this many tokens."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training texts."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N validation texts."})

    def __post_init__(self) -> None:
        if (self.dataset_name is None) == (self.train_file is None):
            raise ValueError("pass exactly one of --dataset_name (a Hub dataset) and --train_file (a local file).")
        for option in ("train_file", "validation_file"):
            path = getattr(self, option)
            if path is not None and Path(path).suffix not in (".txt", ".csv", ".tsv", ".json", ".jsonl"):
                raise ValueError(f"--{option} {path!r}: use a .txt, .csv, .tsv or .json file.")


def load_raw_datasets(data_args: DataArguments) -> Any:
    """The ``DatasetDict`` with a ``train`` split (and a ``validation`` split when there is one)."""
    if data_args.dataset_name is not None:
        return load_dataset(data_args.dataset_name, data_args.dataset_config_name)
    files = {"train": data_args.train_file}
    if data_args.validation_file is not None:
        files["validation"] = data_args.validation_file
    suffix = Path(data_args.train_file or "").suffix
    if suffix == ".txt":
        return load_dataset("text", data_files=files)
    if suffix in (".json", ".jsonl"):
        return load_dataset("json", data_files=files)
    return load_dataset("csv", data_files=files, delimiter="\t" if suffix == ".tsv" else ",")


def train_word_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A lower-cased word-level tokenizer trained on ``texts`` (offline), with an end-of-text token."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from tokenizers.trainers import WordLevelTrainer

    backend = Tokenizer(WordLevel(unk_token="[UNK]"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(texts, WordLevelTrainer(vocab_size=vocab_size, special_tokens=["[UNK]", "[EOS]"]))
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="[EOS]", pad_token="[EOS]")


def load_model(model_args: ModelArguments, tokenizer: Any) -> Any:
    """A pretrained causal LM, or a fresh one from ``--model_type`` / ``--config_overrides`` sized to the tokenizer."""
    if model_args.model_name_or_path is not None:
        return AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path)
    config = AutoConfig.for_model(model_args.model_type)
    if model_args.config_overrides:
        config.update_from_string(model_args.config_overrides)
    config.vocab_size = len(tokenizer)
    config.bos_token_id = config.eos_token_id = config.pad_token_id = tokenizer.eos_token_id
    logger.info("training a new %s from scratch: %s", model_args.model_type, config.to_diff_dict())
    return AutoModelForCausalLM.from_config(config)


def main(argv: list[str] | None = None) -> dict[str, float]:
    # 1. Arguments: the model's, the data's, and the training arguments with the subspace options.
    parser = HfArgumentParser((ModelArguments, DataArguments, SubspaceTrainingArguments))
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        model_args, data_args, training_args = parser.parse_json_file(argv[0])
    elif len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        model_args, data_args, training_args = parser.parse_yaml_file(argv[0])
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(training_args.seed)

    # 2. Data.
    raw = load_raw_datasets(data_args)
    column = data_args.text_column
    if column not in raw["train"].column_names:
        raise ValueError(
            f"the training data has no column {column!r} (it has {', '.join(raw['train'].column_names)}); "
            "pass --text_column."
        )
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples}
    splits = {name: raw[name] for name in ("train", "validation") if name in raw}
    for name, limit in limits.items():
        if name in splits and limit is not None:
            splits[name] = splits[name].select(range(min(limit, len(splits[name]))))

    # 3. Tokenizer and model.
    source = model_args.tokenizer_name or model_args.model_name_or_path
    if source is not None:
        tokenizer = AutoTokenizer.from_pretrained(source)
    else:
        tokenizer = train_word_tokenizer(splits["train"][column], model_args.tokenizer_vocab_size)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = load_model(model_args, tokenizer)

    # 4. Tokenize (each text ends with the end-of-text token) and cut the stream into blocks of block_size tokens.
    block = data_args.block_size

    def tokenize(batch: dict[str, list[Any]]) -> Any:
        encoded = tokenizer([str(t) for t in batch[column]])
        return {"input_ids": [[*ids, tokenizer.eos_token_id] for ids in encoded["input_ids"]]}

    def group_texts(batch: dict[str, list[list[int]]]) -> dict[str, list[list[int]]]:
        stream = list(chain.from_iterable(batch["input_ids"]))
        usable = (len(stream) // block) * block
        return {"input_ids": [stream[i : i + block] for i in range(0, usable, block)]}

    with training_args.main_process_first(desc="tokenizing"):
        for name, split in splits.items():
            tokens = split.map(tokenize, batched=True, remove_columns=split.column_names)
            splits[name] = tokens.map(group_texts, batched=True)

    # 5. Train: the labels are the inputs, made by the collator (the model shifts them by one position); the Hessian
    #    dataset defaults to a seeded subset of hessian_num_samples training blocks, collated the same way.
    trainer = SubspaceTrainer(
        model=model,
        args=training_args,
        train_dataset=splits["train"],
        eval_dataset=splits.get("validation"),
        processing_class=tokenizer,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    metrics = {f"train_{k}" if not k.startswith("train_") else k: v for k, v in result.metrics.items()}
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()

    # 6. Evaluate: perplexity = exp(mean next-token cross-entropy).
    if "validation" in splits:
        eval_metrics = trainer.evaluate()
        eval_metrics["perplexity"] = math.exp(min(eval_metrics["eval_loss"], 50.0))
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)

    # 7. The model card (Hub format, with the subspace settings and the measured alignment).
    trainer.create_model_card(
        finetuned_from=model_args.model_name_or_path,
        dataset=data_args.dataset_name or Path(data_args.train_file or "").name,
        tasks="text-generation",
    )
    return metrics


if __name__ == "__main__":
    main()
