"""Model and data builders of the recipes (see :mod:`hf_subspace.experiments.recipes`).

Each ``prepare_*`` function takes ``(RecipeArguments, SubspaceTrainingArguments)`` and returns a
:class:`~hf_subspace.experiments.arguments.PreparedRecipe`; data loading happens here, before any training. Every
setting comes from the parsed arguments, whose defaults are the recipe's (:data:`~.settings.RECIPE_SPECS`): a builder
falls back on nothing, and an option left unset is an error naming it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import set_seed

from ..models import (
    CNNConfig,
    CNNForImageClassification,
    MLPConfig,
    MLPForImageClassification,
    SST2TransformerConfig,
    SST2TransformerForSequenceClassification,
    classification_loss,
)
from ..models.toy import ToyQuadraticConfig, ToyQuadraticModel, toy_quadratic_dataset, toy_quadratic_loss
from ..tensor_dataset import TensorDataset
from ._data_io import IMAGE_HUB_NAMES, TEXT_HUB_NAMES
from .arguments import PreparedRecipe, RecipeArguments
from .data import build_tokenizer, load_image_classification, load_text_classification, tokenize_dataset

if TYPE_CHECKING:
    from ..training_args import SubspaceTrainingArguments
    from .experiment import ExperimentResult

__all__ = [
    "LOSSES",
    "mse_loss_func",
    "prepare_cnn",
    "prepare_finetune",
    "prepare_mlp",
    "prepare_toy_quadratic",
    "prepare_transformer",
    "prepare_vit",
]


LOSSES: dict[str, str] = {
    "mse": "MSE, as in the paper: ½·Σ over classes of (logit − one-hot target)², averaged over the examples",
    "cross_entropy": "cross-entropy of the logits, averaged over the examples",
    "model": "the checkpoint's own loss (cross-entropy for classification heads)",
    "toy": "the toy valley's per-sample loss ½(a·θ₁² + b·θ₂²) ± c·θ₁·θ₂",
}
"""The losses the recipes train with, in words (``summary.json``'s ``loss``, the model cards)."""

_HUB_DATASETS = {**IMAGE_HUB_NAMES, **TEXT_HUB_NAMES}


def _short_path(path: str) -> str:
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def _option(ra: RecipeArguments, name: str) -> Any:
    """A recipe option the builder needs; the recipe's defaults (:data:`~.settings.RECIPE_SPECS`) set it."""
    value = getattr(ra, name)
    if value is None:
        raise ValueError(f"--{name} is not set (the recipe's defaults give it; pass --{name}).")
    return value


def _describe_data(ra: RecipeArguments, data: Any) -> dict[str, Any]:
    """``dataset_name`` (short, for titles), ``dataset_description`` (for the cards) and ``dataset_tags`` (Hub ids)
    of the data a recipe loaded: where it came from and which examples were used."""
    n_train, n_val = len(data["train"]), len(data["validation"]) if data.get("validation") is not None else 0
    name = _option(ra, "dataset_name")
    tags: list[str] = []
    if ra.train_file:
        short = _short_path(ra.train_file)
        source = f"local file `{Path(ra.train_file).expanduser().resolve()}`"
    elif name == "digits":
        short, source = "digits", "scikit-learn's bundled 8×8 handwritten digits (`sklearn.datasets.load_digits`)"
    elif Path(name).expanduser().exists():
        short, source = _short_path(name), f"local data `{Path(name).expanduser().resolve()}`"
    else:
        hub_id, config = _HUB_DATASETS.get(name.lower(), (name, None))
        short, tags = name, [hub_id]
        source = f"`{hub_id}`{f' ({config})' if config else ''} from the Hugging Face Hub"
    text = f"{source}: the first {n_train:,} training examples"
    if ra.validation_file:
        text += f"; validation: the first {n_val:,} examples of `{Path(ra.validation_file).expanduser().resolve()}`"
    elif n_val:
        text += f"; validation: {n_val:,} held-out examples"
    return {"dataset_name": short, "dataset_description": text, "dataset_tags": tags}


def _load_images(ra: RecipeArguments, standardize: str | None) -> tuple[Any, dict[str, Any]]:
    return load_image_classification(
        _option(ra, "dataset_name"),
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
    config = ToyQuadraticConfig()
    if ra.model_name_or_path:
        config = ToyQuadraticConfig.from_pretrained(ra.model_name_or_path)
    model = ToyQuadraticModel(config)
    dataset = toy_quadratic_dataset(num_pairs=max(1, _option(ra, "num_train") // 2))

    def plot_trajectories(result: ExperimentResult) -> list[Path]:
        from .trajectory_figure import plot_trajectory_2d

        prefix = str(result.summary.get("prefix_optimizer", "sgd")).upper()
        # (step, θ₁, θ₂) rows: the figure also draws each coordinate against the step.
        paths = {mode: np.asarray(traj, dtype=float)[:, :3] for mode, traj in result.trajectories.items() if traj}
        if not paths:
            return []
        points = np.concatenate([p[:, 1:] for p in paths.values()])
        x_span = float(np.abs(points[:, 0]).max()) * 1.15 or 1e-3
        y_lo, y_hi = float(points[:, 1].min()), float(points[:, 1].max())
        pad = 0.06 * max(y_hi - y_lo, 1e-3)
        out = plot_trajectory_2d(
            lambda x, y: toy_quadratic_loss(config, x, y),
            paths,
            result.output_dir / "trajectory.png",
            xlim=(-x_span, x_span),
            ylim=(min(y_lo - pad, -pad), y_hi + pad),
            title=f"toy valley ½(a·θ₁² + b·θ₂²): paths after the shared {prefix} prefix",
            xlabel=rf"$\theta_1$ (sharp direction, curvature a = {config.sharpness:g})",
            ylabel=rf"$\theta_2$ (flat direction, curvature b = {config.flatness:g})",
        )
        return [out]

    extras = {"toy": {"sharpness": config.sharpness, "flatness": config.flatness, "noise": config.noise}}
    return PreparedRecipe(
        model=model,
        train_dataset=dataset,
        dataset_name="toy two-sample valley",
        dataset_description=(
            f"no data set: the toy valley's two per-sample losses (a = {config.sharpness:g}, b = {config.flatness:g}, "
            f"c = {config.noise:g}) alternate, {len(dataset)} examples per epoch"
        ),
        loss=LOSSES["toy"],
        extras=extras,
        record_trajectory=True,
        after=plot_trajectories,
    )


# ----------------------------------------------------------------------------------------------- images


def prepare_mlp(ra: RecipeArguments, ta: SubspaceTrainingArguments) -> PreparedRecipe:
    """The paper's MLP (784-200-200-10, tanh, MSE by default) on MNIST or any image data (input size inferred)."""
    data, info = _load_images(ra, ra.standardize)
    hidden = [int(h) for h in _option(ra, "hidden_sizes").split(",") if h.strip()]
    set_seed(ta.seed)
    config = MLPConfig(
        input_size=int(math.prod(info["image_shape"])),
        hidden_sizes=hidden,
        activation=_option(ra, "activation"),
        num_labels=max(int(info["num_labels"]), 2),
        loss_type=_option(ra, "loss_type"),
    )
    return _image_recipe(MLPForImageClassification(config), ra, data, info)


def _image_recipe(model: Any, ra: RecipeArguments, data: Any, info: dict[str, Any]) -> PreparedRecipe:
    """A paper image model with its train/validation images, data description, loss and extras."""
    return PreparedRecipe(
        model=model,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        **_describe_data(ra, data),
        loss=LOSSES[model.config.loss_type],
        extras=_extras(data, info),
    )


def prepare_cnn(ra: RecipeArguments, ta: SubspaceTrainingArguments) -> PreparedRecipe:
    """The paper's CNN ([conv 3×3 (32) → ReLU → max-pool] × 2 → linear, MSE by default) on CIFAR-10 or any images."""
    data, info = _load_images(ra, ra.standardize)
    channels, height, width = info["image_shape"]
    set_seed(ta.seed)
    config = CNNConfig(
        num_channels=int(channels),
        image_size=int(height) if height == width else [int(height), int(width)],
        num_labels=max(int(info["num_labels"]), 2),
        loss_type=_option(ra, "loss_type"),
    )
    return _image_recipe(CNNForImageClassification(config), ra, data, info)


# ----------------------------------------------------------------------------------------------- text


def _load_text(ra: RecipeArguments) -> Any:
    return load_text_classification(
        _option(ra, "dataset_name"),
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
    data = _load_text(ra)
    tokenizer = build_tokenizer(data["train"]["sentence"], name_or_path=ra.tokenizer_name, max_length=ra.max_seq_length)
    encoded = tokenize_dataset(data, tokenizer, max_length=ra.max_seq_length, progress=not ta.disable_tqdm)
    set_seed(ta.seed)
    config = SST2TransformerConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=ra.max_seq_length,
        num_labels=_num_labels(data),
        pad_token_id=tokenizer.pad_token_id,
        loss_type=_option(ra, "loss_type"),
    )
    model = SST2TransformerForSequenceClassification(config)
    extras = {"num_validation": len(encoded["validation"]), "vocab_size": len(tokenizer)}
    return PreparedRecipe(
        model=model,
        train_dataset=encoded["train"],
        eval_dataset=encoded["validation"],
        processing_class=tokenizer,
        **_describe_data(ra, data),
        loss=LOSSES[config.loss_type],
        extras=extras,
    )


# ----------------------------------------------------------------------------------------------- fine-tuning


def mse_loss_func(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
    """The paper's MSE loss on a Hub model's logits (``Trainer(compute_loss_func=...)``)."""
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

    config = AutoConfig.from_pretrained(_option(ra, "model_name_or_path"))
    task = ra.task or _guess_task(config)
    loss_func = mse_loss_func if ra.loss_type == "mse" else None
    set_seed(ta.seed)
    if task == "text":
        return _finetune_text(ra, loss_func, progress=not ta.disable_tqdm)
    return _finetune_image(ra, config, loss_func)


def _finetune_text(ra: RecipeArguments, loss_func: Any, progress: bool = True) -> PreparedRecipe:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    data = _load_text(ra)
    tokenizer = AutoTokenizer.from_pretrained(ra.tokenizer_name or ra.model_name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    encoded = tokenize_dataset(data, tokenizer, max_length=ra.max_seq_length, progress=progress)
    model = _from_pretrained(AutoModelForSequenceClassification, ra.model_name_or_path, _num_labels(data))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return PreparedRecipe(
        model=model,
        train_dataset=encoded["train"],
        eval_dataset=encoded["validation"],
        processing_class=tokenizer,
        compute_loss_func=loss_func,
        **_describe_data(ra, data),
        loss=LOSSES["mse" if loss_func is not None else "model"],
        extras={"model_name_or_path": ra.model_name_or_path, "task": "text"},
    )


def _finetune_image(ra: RecipeArguments, config: Any, loss_func: Any) -> PreparedRecipe:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    data, info = _load_images(ra, None)  # pixels in [0, 1]; the checkpoint's processor normalises
    processor = AutoImageProcessor.from_pretrained(ra.model_name_or_path)
    channels = int(getattr(config, "num_channels", 3))

    train = TensorDataset(_process_images(data["train"], processor, channels))
    val_cols = _process_images(data["validation"], processor, channels)
    val = TensorDataset(val_cols) if len(val_cols["labels"]) else None
    model = _from_pretrained(AutoModelForImageClassification, ra.model_name_or_path, max(int(info["num_labels"]), 2))
    return PreparedRecipe(
        model=model,
        train_dataset=train,
        eval_dataset=val,
        processing_class=processor,
        compute_loss_func=loss_func,
        **_describe_data(ra, data),
        loss=LOSSES["mse" if loss_func is not None else "model"],
        extras={"model_name_or_path": ra.model_name_or_path, "task": "image"},
    )


def _process_images(split: Any, processor: Any, channels: int) -> dict[str, torch.Tensor]:
    """``{"pixel_values": [N, C, H, W], "labels": [N]}`` of a split of float pixels in [0, 1] through an image
    processor (``do_rescale=False``: the loader already scaled them; grey images repeated to ``channels``)."""
    arrays = split.with_format("numpy")[:]
    x = np.asarray(arrays["pixel_values"], dtype=np.float32)
    if len(x) == 0:
        return {"pixel_values": torch.empty(0), "labels": torch.empty(0, dtype=torch.long)}
    if x.shape[1] != channels:
        x = np.repeat(x[:, :1], channels, axis=1)
    pixels = processor(images=list(x), do_rescale=False, return_tensors="pt", input_data_format="channels_first")
    return {"pixel_values": pixels["pixel_values"], "labels": torch.as_tensor(arrays["labels"])}


# ----------------------------------------------------------------------------------------------- vision transformer


def prepare_vit(ra: RecipeArguments, ta: SubspaceTrainingArguments) -> PreparedRecipe:
    """A ``transformers`` ViT built from a config (``AutoModelForImageClassification.from_config``) on CIFAR-10.

    ``ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
    intermediate_size=128)`` (81k parameters; ``--hidden_sizes H,L`` sets hidden size and layers), eager attention
    (SDPA has no double backward on CPU). Images go through ``ViTImageProcessor(do_resize=False, image_mean, image_std)``
    with the training subset's per-channel statistics (``--standardize none``: ViT's 0.5/0.5); the processor is saved
    with every branch model, so ``AutoImageProcessor.from_pretrained(branch_dir)`` works on uint8 images. Loss: the
    model's own cross-entropy (the recipe's default; ``--loss_type mse``: the paper's MSE, which trains this model
    much more slowly at a stable SGD learning rate).
    """
    from transformers import AutoModelForImageClassification, ViTConfig, ViTImageProcessor

    data, info = _load_images(ra, None)  # pixels in [0, 1]; the processor normalises
    channels, height, width = (int(v) for v in info["image_shape"])
    if height != width or height % 8:
        raise ValueError(f"vit_cifar10 needs square images with a side divisible by 8, got {height}×{width}.")
    mean, std = [0.5] * channels, [0.5] * channels
    if ra.standardize is not None:
        x = np.asarray(data["train"].with_format("numpy")[:]["pixel_values"], dtype=np.float64)
        axes = (0, 2, 3) if ra.standardize == "per_channel" else None
        mean = np.broadcast_to(x.mean(axis=axes), (channels,)).tolist()
        std = np.broadcast_to(np.maximum(x.std(axis=axes), 1e-8), (channels,)).tolist()
    processor = ViTImageProcessor(do_resize=False, image_mean=mean, image_std=std)
    try:
        hidden, layers = ([int(v) for v in _option(ra, "hidden_sizes").split(",")] + [2])[:2]
    except ValueError:
        hidden = layers = 0
    if hidden < 1 or layers < 1:
        raise ValueError(f"--hidden_sizes={ra.hidden_sizes!r}: vit_cifar10 takes 'HIDDEN,LAYERS', e.g. 64,2.")
    labels = max(int(info["num_labels"]), 2)
    set_seed(ta.seed)
    config = ViTConfig(
        image_size=height,
        patch_size=8,
        num_channels=channels,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4 if hidden % 4 == 0 else 1,
        intermediate_size=2 * hidden,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=labels,
        id2label={i: str(i) for i in range(labels)},
        label2id={str(i): i for i in range(labels)},
    )
    model = AutoModelForImageClassification.from_config(config, attn_implementation="eager")
    train = TensorDataset(_process_images(data["train"], processor, channels))
    val_cols = _process_images(data["validation"], processor, channels)
    return PreparedRecipe(
        model=model,
        train_dataset=train,
        eval_dataset=TensorDataset(val_cols) if len(val_cols["labels"]) else None,
        processing_class=processor,
        compute_loss_func=mse_loss_func if ra.loss_type == "mse" else None,
        **_describe_data(ra, data),
        loss=LOSSES["mse" if ra.loss_type == "mse" else "cross_entropy"],
        extras={"image_shape": info["image_shape"], "num_validation": len(val_cols["labels"]),
                "vit": {"hidden_size": hidden, "num_hidden_layers": layers, "patch_size": 8}},
    )  # fmt: skip
