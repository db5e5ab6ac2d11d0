#!/usr/bin/env python
"""Fine-tune a transformers model for text classification with dominant- or bulk-subspace projected updates.

One linear script in the style of transformers' ``examples/pytorch/text-classification/run_glue.py``: copy it and
edit what you need. It uses hf-subspace's public API only: ``SubspaceTrainingArguments`` (every ``TrainingArguments``
option plus the ``subspace_*`` / ``hessian_*`` ones) and ``SubspaceTrainer`` (a drop-in ``Trainer``).

    # a Hub dataset and checkpoint
    python examples/run_subspace_classification.py \\
        --model_name_or_path google-bert/bert-base-uncased --dataset_name stanfordnlp/sst2 \\
        --output_dir runs/bert-sst2-bulk --max_steps 1000 --learning_rate 2e-5 --per_device_train_batch_size 32 \\
        --subspace_mode bulk --subspace_k 2 --subspace_start_step 200 --subspace_refresh_steps 10 \\
        --hessian_num_samples 512 --report_to tensorboard

    # local files (csv, tsv or json with a text and a label column), e.g. the SST-2 copy of the repository
    python examples/run_subspace_classification.py --model_name_or_path ./my-checkpoint \\
        --train_file ../shared/data/sst2/train.tsv --validation_file ../shared/data/sst2/dev.tsv \\
        --output_dir runs/local --max_steps 200 --subspace_mode dominant --subspace_k 2

The steps, in order: parse the arguments (command line, or one ``.json``/``.yaml`` file) → load the data
(``datasets.load_dataset``) → tokenizer and model (``AutoTokenizer``, ``AutoModelForSequenceClassification``) →
tokenize → ``SubspaceTrainer(...).train()`` → ``evaluate()`` → ``create_model_card()``. Offline, set
``HF_HUB_OFFLINE=1`` and pass local paths.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from datasets import load_dataset
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    EvalPrediction,
    HfArgumentParser,
    set_seed,
)

from hf_subspace import SubspaceTrainer, SubspaceTrainingArguments

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    """Which model and tokenizer to fine-tune."""

    model_name_or_path: str = field(metadata={"help": "A Hub checkpoint or a local folder."})
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer (Hub name or folder); default: the model's."}
    )


@dataclass
class DataArguments:
    """Which data to train and evaluate on."""

    dataset_name: str | None = field(default=None, metadata={"help": "A Hub dataset, e.g. stanfordnlp/sst2."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration."})
    train_file: str | None = field(default=None, metadata={"help": "Local training data: .csv, .tsv or .json."})
    validation_file: str | None = field(default=None, metadata={"help": "Local validation data (same formats)."})
    text_column: str = field(default="sentence", metadata={"help": "The column holding the text."})
    label_column: str = field(default="label", metadata={"help": "The column holding the integer class."})
    max_seq_length: int = field(default=128, metadata={"help": "Texts are truncated to this many tokens."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N validation examples."})

    def __post_init__(self) -> None:
        if (self.dataset_name is None) == (self.train_file is None):
            raise ValueError("pass exactly one of --dataset_name (a Hub dataset) and --train_file (a local file).")
        for option in ("train_file", "validation_file"):
            path = getattr(self, option)
            if path is not None and Path(path).suffix not in (".csv", ".tsv", ".json", ".jsonl"):
                raise ValueError(f"--{option} {path!r}: use a .csv, .tsv or .json file.")


def load_raw_datasets(data_args: DataArguments) -> Any:
    """The ``DatasetDict`` with a ``train`` split (and a ``validation`` split when there is one)."""
    if data_args.dataset_name is not None:
        return load_dataset(data_args.dataset_name, data_args.dataset_config_name)
    files = {"train": data_args.train_file}
    if data_args.validation_file is not None:
        files["validation"] = data_args.validation_file
    suffix = Path(data_args.train_file or "").suffix
    if suffix in (".json", ".jsonl"):
        return load_dataset("json", data_files=files)
    return load_dataset("csv", data_files=files, delimiter="\t" if suffix == ".tsv" else ",")


def compute_accuracy(prediction: EvalPrediction) -> dict[str, float]:
    """Accuracy of the argmax of the logits."""
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    return {"accuracy": float((np.argmax(logits, axis=-1) == prediction.label_ids).mean())}


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
    logger.info("training arguments: %s", training_args)
    set_seed(training_args.seed)

    # 2. Data.
    raw = load_raw_datasets(data_args)
    train = raw["train"]
    for column in (data_args.text_column, data_args.label_column):
        if column not in train.column_names:
            raise ValueError(
                f"the training data has no column {column!r} (it has {', '.join(train.column_names)}); "
                "pass --text_column / --label_column."
            )
    if data_args.max_train_samples is not None:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    validation = raw.get("validation")
    if validation is not None and data_args.max_eval_samples is not None:
        validation = validation.select(range(min(data_args.max_eval_samples, len(validation))))
    num_labels = max(int(label) for label in train[data_args.label_column]) + 1

    # 3. Tokenizer and model.
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path)
    config = AutoConfig.from_pretrained(model_args.model_name_or_path, num_labels=num_labels)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_args.model_name_or_path, config=config, ignore_mismatched_sizes=True
    )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id

    def tokenize(batch: dict[str, list[Any]]) -> Any:
        encoded = tokenizer(batch[data_args.text_column], truncation=True, max_length=data_args.max_seq_length)
        encoded["labels"] = [int(label) for label in batch[data_args.label_column]]
        return encoded

    with training_args.main_process_first(desc="tokenizing"):
        train = train.map(tokenize, batched=True, remove_columns=train.column_names)
        if validation is not None:
            validation = validation.map(tokenize, batched=True, remove_columns=validation.column_names)

    # 4. Train: SubspaceTrainer is a Trainer; the Hessian dataset defaults to a seeded subset of the training set
    #    (hessian_num_samples examples), batched with the same data collator.
    trainer = SubspaceTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=validation,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_accuracy,
    )
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    metrics = {f"train_{k}" if not k.startswith("train_") else k: v for k, v in result.metrics.items()}
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()

    # 5. Evaluate.
    if validation is not None:
        eval_metrics = trainer.evaluate()
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)

    # 6. The model card (Hub format, with the subspace settings and the measured alignment).
    trainer.create_model_card(
        finetuned_from=model_args.model_name_or_path,
        dataset=data_args.dataset_name or Path(data_args.train_file or "").name,
        tasks="text-classification",
    )
    return metrics


if __name__ == "__main__":
    main()
