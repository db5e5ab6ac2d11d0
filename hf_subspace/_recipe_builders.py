"""Model and data builders of the recipes (see :mod:`hf_subspace.recipes`).

Each ``prepare_*`` function takes ``(RecipeArguments, SubspaceTrainingArguments)`` and returns a
:class:`~hf_subspace.recipes.PreparedRecipe`; data loading (and so every missing-file error) happens here, before
any training.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import set_seed

from .data import build_tokenizer, load_image_classification, load_text_classification, tokenize_dataset

if TYPE_CHECKING:
    from .experiment import ExperimentResult
    from .recipes import PreparedRecipe, RecipeArguments
    from .training_args import SubspaceTrainingArguments

__all__ = [
    "mse_loss_func",
    "prepare_cnn",
    "prepare_finetune",
    "prepare_mlp",
    "prepare_toy_quadratic",
    "prepare_transformer",
]


def _prepared(**kwargs: Any) -> PreparedRecipe:
    from .recipes import PreparedRecipe

    return PreparedRecipe(**kwargs)


def _dataset_label(ra: RecipeArguments, default: str) -> str:
    return Path(ra.train_file).name if ra.train_file else (ra.dataset_name or default)


def _load_images(ra: RecipeArguments, default: str, standardize: str | None) -> tuple[Any, dict[str, Any]]:
    return load_image_classification(
        ra.dataset_name or default,
        train_file=ra.train_file,
        validation_file=ra.validation_file,
        num_train=ra.num_train,
        num_validation=ra.num_validation,
        standardize=standardize,
        return_info=True,
    )


def _extras(data: Any, info: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"num_validation": len(data["validation"])}
    if info:
        out["image_shape"] = info.get("image_shape")
    return out


# ----------------------------------------------------------------------------------------------- toy


def prepare_toy_quadratic(ra: RecipeArguments, ta: SubspaceTrainingArguments) -> PreparedRecipe:
    """The 2-D valley of :mod:`hf_subspace.models.toy` (two per-sample losses, batch size 1)."""
    from .models.toy import ToyQuadraticConfig, ToyQuadraticModel, toy_quadratic_dataset, toy_quadratic_loss

    config = ToyQuadraticConfig()
    if ra.model_name_or_path:
        config = ToyQuadraticConfig.from_pretrained(ra.model_name_or_path)
    model = ToyQuadraticModel(config)
    dataset = toy_quadratic_dataset(num_pairs=max(1, (ra.num_train or 100) // 2))

    def plot_trajectories(result: ExperimentResult) -> list[Path]:
        from .plotting import plot_trajectory_2d

        prefix = str(result.summary.get("prefix_optimizer", "sgd")).upper()
        paths = {mode: np.asarray(traj, dtype=float)[:, 1:3] for mode, traj in result.trajectories.items() if traj}
        if not paths:
            return []
        points = np.concatenate(list(paths.values()))
        x_span = float(np.abs(points[:, 0]).max()) * 1.3 or 1e-3
        y_lo, y_hi = float(points[:, 1].min()), float(points[:, 1].max())
        pad = 0.08 * max(y_hi - y_lo, 1e-3)
        out = plot_trajectory_2d(
            lambda x, y: toy_quadratic_loss(config, x, y),
            paths,
            result.output_dir / "trajectory.png",
            xlim=(-x_span, x_span),
            ylim=(min(y_lo - pad, -pad), y_hi + pad),
            title=f"toy valley: trajectories after the shared {prefix} prefix",
        )
        return [out]

    extras = {"toy": {"sharpness": config.sharpness, "flatness": config.flatness, "noise": config.noise}}
    return _prepared(
        model=model,
        train_dataset=dataset,
        dataset_name="toy two-sample valley",
        extras=extras,
        record_trajectory=True,
        after=plot_trajectories,
    )


# ----------------------------------------------------------------------------------------------- images


def prepare_mlp(ra: RecipeArguments, ta: SubspaceTrainingArguments) -> PreparedRecipe:
    """The paper's MLP (784-200-200-10, tanh, MSE by default) on MNIST or any image data (input size inferred)."""
    from .models import MLPConfig, MLPForImageClassification

    data, info = _load_images(ra, "mnist", ra.standardize)
    hidden = [int(h) for h in (ra.hidden_sizes or "200,200").split(",") if h.strip()]
    set_seed(ta.seed)
    config = MLPConfig(
        input_size=int(math.prod(info["image_shape"])),
        hidden_sizes=hidden,
        activation=ra.activation or "tanh",
        num_labels=max(int(info["num_labels"]), 2),
        loss_type=ra.loss_type or "mse",
    )
    model = MLPForImageClassification(config)
    return _prepared(
        model=model,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        dataset_name=_dataset_label(ra, "mnist"),
        extras=_extras(data, info),
    )


def prepare_cnn(ra: RecipeArguments, ta: SubspaceTrainingArguments) -> PreparedRecipe:
    """The paper's CNN ([conv 3×3 (32) → ReLU → max-pool] × 2 → linear, MSE by default) on CIFAR-10 or any images."""
    from .models import CNNConfig, CNNForImageClassification

    data, info = _load_images(ra, "cifar10", ra.standardize)
    channels, height, width = info["image_shape"]
    set_seed(ta.seed)
    config = CNNConfig(
        num_channels=int(channels),
        image_size=int(height) if height == width else [int(height), int(width)],
        num_labels=max(int(info["num_labels"]), 2),
        loss_type=ra.loss_type or "mse",
    )
    model = CNNForImageClassification(config)
    return _prepared(
        model=model,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        dataset_name=_dataset_label(ra, "cifar10"),
        extras=_extras(data, info),
    )


# ----------------------------------------------------------------------------------------------- text


def _load_text(ra: RecipeArguments) -> Any:
    return load_text_classification(
        ra.dataset_name or "sst2",
        train_file=ra.train_file,
        validation_file=ra.validation_file,
        num_train=ra.num_train,
        num_validation=ra.num_validation,
        text_column=ra.text_column,
        label_column=ra.label_column,
    )


def _num_labels(data: Any) -> int:
    labels = [int(v) for split in data.values() for v in split["label"]]
    return max(max(labels, default=1) + 1, 2)


def prepare_transformer(ra: RecipeArguments, ta: SubspaceTrainingArguments) -> PreparedRecipe:
    """The paper's Transformer encoder trained from scratch on SST-2 (or any two-column text data)."""
    from .models import SST2TransformerConfig, SST2TransformerForSequenceClassification

    data = _load_text(ra)
    tokenizer = build_tokenizer(data["train"]["sentence"], name_or_path=ra.tokenizer_name, max_length=ra.max_seq_length)
    encoded = tokenize_dataset(data, tokenizer, max_length=ra.max_seq_length)
    set_seed(ta.seed)
    config = SST2TransformerConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=ra.max_seq_length,
        num_labels=_num_labels(data),
        pad_token_id=tokenizer.pad_token_id,
        loss_type=ra.loss_type or "mse",
    )
    model = SST2TransformerForSequenceClassification(config)
    extras = {"num_validation": len(encoded["validation"]), "vocab_size": len(tokenizer)}
    return _prepared(
        model=model,
        train_dataset=encoded["train"],
        eval_dataset=encoded["validation"],
        processing_class=tokenizer,
        dataset_name=_dataset_label(ra, "sst2"),
        extras=extras,
    )


# ----------------------------------------------------------------------------------------------- fine-tuning


def mse_loss_func(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
    """The paper's MSE loss on a Hub model's logits (``Trainer(compute_loss_func=...)``)."""
    from .models import classification_loss

    logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
    return classification_loss(logits, labels, "mse")


def _guess_task(config: Any) -> str:
    archs = " ".join(getattr(config, "architectures", None) or [])
    if "ImageClassification" in archs or hasattr(config, "num_channels") or hasattr(config, "image_size"):
        return "image"
    return "text"


def _from_pretrained(auto_cls: Any, name: str, num_labels: int) -> Any:
    kwargs = {"num_labels": num_labels, "ignore_mismatched_sizes": True}
    try:  # eager attention: SDPA kernels do not support the double backward of Hessian-vector products on CPU
        return auto_cls.from_pretrained(name, attn_implementation="eager", **kwargs)
    except (ValueError, TypeError):
        return auto_cls.from_pretrained(name, **kwargs)


def prepare_finetune(ra: RecipeArguments, ta: SubspaceTrainingArguments) -> PreparedRecipe:
    """Fine-tune a Hub checkpoint (``--model_name_or_path``) for sequence or image classification."""
    from transformers import AutoConfig

    if not ra.model_name_or_path:
        raise ValueError("the finetune recipe needs --model_name_or_path (a Hub checkpoint or a local folder).")
    config = AutoConfig.from_pretrained(ra.model_name_or_path)
    task = ra.task or _guess_task(config)
    loss_func = mse_loss_func if ra.loss_type == "mse" else None
    set_seed(ta.seed)
    if task == "text":
        return _finetune_text(ra, loss_func)
    return _finetune_image(ra, config, loss_func)


def _finetune_text(ra: RecipeArguments, loss_func: Any) -> PreparedRecipe:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    data = _load_text(ra)
    tokenizer = AutoTokenizer.from_pretrained(ra.tokenizer_name or ra.model_name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    encoded = tokenize_dataset(data, tokenizer, max_length=ra.max_seq_length)
    model = _from_pretrained(AutoModelForSequenceClassification, ra.model_name_or_path, _num_labels(data))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return _prepared(
        model=model,
        train_dataset=encoded["train"],
        eval_dataset=encoded["validation"],
        processing_class=tokenizer,
        compute_loss_func=loss_func,
        dataset_name=_dataset_label(ra, "sst2"),
        extras={"model_name_or_path": ra.model_name_or_path, "task": "text"},
    )


def _finetune_image(ra: RecipeArguments, config: Any, loss_func: Any) -> PreparedRecipe:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    data, info = _load_images(ra, "cifar10", None)  # pixels in [0, 1]; the checkpoint's processor normalises
    processor = AutoImageProcessor.from_pretrained(ra.model_name_or_path)
    channels = int(getattr(config, "num_channels", 3))

    def process(split: Any) -> dict[str, torch.Tensor]:
        arrays = split.with_format("numpy")[:]
        x = np.asarray(arrays["pixel_values"], dtype=np.float32)
        if x.shape[1] != channels:
            x = np.repeat(x[:, :1], channels, axis=1)
        if len(x) == 0:
            return {"pixel_values": torch.empty(0), "labels": torch.empty(0, dtype=torch.long)}
        pixels = processor(images=list(x), do_rescale=False, return_tensors="pt", input_data_format="channels_first")
        return {"pixel_values": pixels["pixel_values"], "labels": torch.as_tensor(arrays["labels"])}

    from ._tensor_data import TensorDataset

    train = TensorDataset(process(data["train"]))
    val_cols = process(data["validation"])
    val = TensorDataset(val_cols) if len(val_cols["labels"]) else None
    model = _from_pretrained(AutoModelForImageClassification, ra.model_name_or_path, max(int(info["num_labels"]), 2))
    return _prepared(
        model=model,
        train_dataset=train,
        eval_dataset=val,
        processing_class=processor,
        compute_loss_func=loss_func,
        dataset_name=_dataset_label(ra, "cifar10"),
        extras={"model_name_or_path": ra.model_name_or_path, "task": "image"},
    )
