"""``hf-subspace spectrum``: the top Hessian eigenvalues (and a plot) of a saved model."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoConfig, default_data_collator

from .. import models
from ..eigensolvers import top_eigenpairs
from ..hessian import HessianOperator
from ..models import toy
from ..tensor_dataset import to_tensor_dataset
from ..training_args import SubspaceTrainingArguments
from .arguments import RecipeArguments
from .plotting import plot_spectrum
from .quickstart import quiet_libraries
from .recipes import get_recipe, prepare_recipe
from .spectral_figure import spectral_record

__all__ = ["load_saved_model", "run_spectrum", "trained_loss_fn"]


def load_saved_model(model_dir: Path) -> Any:
    """The model saved in ``model_dir``: a class of :mod:`hf_subspace.models` or of ``transformers`` named by its
    config's ``architectures``.

    Raises:
        ValueError: when no known class matches.
    """
    config = AutoConfig.from_pretrained(model_dir)
    for arch in config.architectures or []:
        cls = getattr(models, arch, None) or getattr(toy, arch, None) or getattr(transformers, arch, None)
        if cls is not None:
            return cls.from_pretrained(model_dir)
    raise ValueError(f"cannot tell which model class {model_dir} holds (architectures={config.architectures})")


def trained_loss_fn(compute_loss_func: Callable[..., torch.Tensor] | None) -> Callable[..., torch.Tensor] | None:
    """The :class:`~hf_subspace.hessian.HessianOperator` ``loss_fn`` of a run trained with ``compute_loss_func``.

    Mirrors ``Trainer.compute_loss`` with a ``compute_loss_func``: the labels are taken out of the batch, the model
    runs on the rest, and ``compute_loss_func(outputs, labels, num_items_in_batch=...)`` is the loss (e.g.
    ``finetune --loss_type mse``: the MSE on the logits, not the model's own cross-entropy). ``None`` (the run
    trained on the model's own loss) gives ``None``: the operator's default, ``model(**batch)`` 's loss.
    """
    if compute_loss_func is None:
        return None

    def loss_fn(model: Any, batch: Mapping[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        inputs = dict(batch)
        labels = inputs.pop("labels")
        return compute_loss_func(model(**inputs), labels, num_items_in_batch=num_items_in_batch)

    return loss_fn


def _hessian_loss(choice: str | None, prepared: Any, model: Any) -> tuple[Any, str]:
    """The ``HessianOperator`` loss and the name recorded in ``spectrum.json`` for ``--loss`` (``None``: as trained).

    The model's own loss is named by its config's ``loss_type`` where it has one (the recipes' models), so the record
    names the loss whose eigenvalues it holds, not the recipe's default.
    """
    own = f"model's own loss ({getattr(model.config, 'loss_type', type(model).__name__)})"
    if choice is None:
        if prepared.compute_loss_func is not None:
            return trained_loss_fn(prepared.compute_loss_func), str(prepared.loss)
        return None, own
    if choice == "model":
        return None, own

    def loss_fn(m: Any, batch: Mapping[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        inputs = dict(batch)
        labels = inputs.pop("labels")
        return models.classification_loss(m(**inputs).logits, labels, choice)

    return loss_fn, choice


def _resolve_recorded_paths(options: dict[str, Any], model_dir: Path) -> None:
    """Make the data paths of an experiment record usable from any folder: absolute paths stay; a relative one
    (records written before paths were stored absolute) is looked up beside the branch folder and its experiment."""
    for key in ("train_file", "dataset_name"):
        value = options.get(key)
        if not isinstance(value, str) or not value or Path(value).expanduser().is_absolute():
            continue
        for base in (model_dir, model_dir.parent, model_dir.parent.parent):
            if (base / value).exists():
                options[key] = str((base / value).resolve())
                break


def run_spectrum(ns: Any) -> int:
    """Run ``hf-subspace spectrum`` from its parsed options (see :mod:`hf_subspace.cli`); returns the exit status.

    Writes ``spectrum.json`` (eigenvalues, Hessian-vector products, seconds) and ``spectrum.png`` into
    ``ns.output_dir`` (default: the model folder).
    """
    quiet_libraries()
    model_dir = Path(ns.model_dir)
    budget = getattr(ns, "graph_cache_bytes", None)
    if budget is not None and budget < 0:
        print(
            f"error: --graph_cache_bytes={budget} must be >= 0 (0 rebuilds the graphs for every product; leave it "
            "unset for the default budget)",
            file=sys.stderr,
        )
        return 2
    if not (model_dir / "config.json").is_file():
        print(f"error: {model_dir} holds no saved model (config.json missing)", file=sys.stderr)
        return 2
    meta_path = model_dir / "hf_subspace_experiment.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    recipe_name = ns.recipe or meta.get("recipe")
    if recipe_name is None:
        print(
            "error: give --recipe (and --dataset_name or --train_file): no experiment record in model_dir",
            file=sys.stderr,
        )
        return 2
    spec = get_recipe(recipe_name)
    fields = RecipeArguments.__dataclass_fields__
    options = {k: v for k, v in spec.defaults.items() if k in fields}
    options.update({k: v for k, v in (meta.get("recipe_args") or {}).items() if k in fields})
    _resolve_recorded_paths(options, model_dir)
    for key in ("dataset_name", "train_file"):
        if getattr(ns, key):
            options[key] = getattr(ns, key)
            if key == "dataset_name":
                options["train_file"] = None
    train_file = options.get("train_file")
    if train_file and not Path(train_file).expanduser().exists():
        print(
            f"error: the training data recorded in {meta_path}, {train_file}, does not exist; pass --train_file PATH "
            "(or --dataset_name NAME).",
            file=sys.stderr,
        )
        return 2
    # Only the training data: no validation set. The recorded num_train is kept, so image standardisation uses the
    # statistics the model was trained with; the Hessian takes the first --num_samples examples of it.
    options.update({"validation_file": None, "num_validation": 0, "overwrite_output_dir": False})
    if options.get("num_train") is None:
        options["num_train"] = ns.num_samples
    if (model_dir / "tokenizer_config.json").is_file():
        options["tokenizer_name"] = str(model_dir)
    if spec.name == "finetune":
        options["model_name_or_path"] = str(model_dir)
    recipe_args = RecipeArguments(**options)
    ta = SubspaceTrainingArguments(output_dir=str(model_dir), report_to="none", use_cpu=not torch.cuda.is_available())
    prepared = prepare_recipe(spec.name, recipe_args, ta)
    data = to_tensor_dataset(prepared.train_dataset)
    n = min(ns.num_samples, len(data))
    batches = [
        default_data_collator([data[i] for i in range(s, min(s + ns.batch_size, n))])
        for s in range(0, n, ns.batch_size)
    ]
    model = load_saved_model(model_dir).to(ta.device)
    # The Hessian of the loss the run trained (a recipe's compute_loss_func, e.g. finetune --loss_type mse), or --loss.
    loss_fn, loss_name = _hessian_loss(getattr(ns, "loss", None), prepared, model)
    operator = HessianOperator(model, batches, loss_fn, graph_cache_bytes=budget)
    num = ns.num_eigenvalues or min(2 * ns.k, operator.dim - 1)
    started = time.perf_counter()
    with operator.reusing_graphs():  # the top-k, trace and density share the kept batch graphs
        result = top_eigenpairs(operator, num, method=ns.method, seed=ns.seed, progress=True)
        values = [float(v) for v in result.eigenvalues]
        out = Path(ns.output_dir) if ns.output_dir else model_dir
        record = {
            "model_dir": str(model_dir),
            "recipe": spec.name,
            "num_samples": n,
            "loss": loss_name,
            "k": ns.k,
            "eigenvalues": values,
            "converged": bool(result.converged),
            "hessian_vector_products": int(result.num_matvecs),
            "seconds": time.perf_counter() - started,
            "graph_cache_bytes": budget,
        }
        out.mkdir(parents=True, exist_ok=True)
        title = f"Hessian spectrum of {model_dir} ({n} samples)"
        record.update(spectral_record(operator, ns, out, values, title))  # --trace / --density, if asked
        record["graphs_built"] = operator.num_graphs_built
    (out / "spectrum.json").write_text(json.dumps(record, indent=2))
    figure = plot_spectrum(values, out / "spectrum.png", k=ns.k, title=title)
    print(f"top {num} Hessian eigenvalues ({n} samples, {result.num_matvecs} Hessian-vector products):")
    for i, value in enumerate(values, start=1):
        print(f"  λ_{i:<3d} {value: .6g}" + ("   ← dominant" if i <= ns.k else ""))
    if "trace" in record:
        print(f"trace {record['trace']['estimate']:.6g} ± {record['trace']['standard_error']:.2g} (Hutch++)")
    print(f"wrote {out / 'spectrum.json'} and {figure}" + (" and spectral_density.png" if "density" in record else ""))
    return 0
