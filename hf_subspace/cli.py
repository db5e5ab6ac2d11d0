"""The ``hf-subspace`` command: ``quickstart``, ``run <recipe>``, ``spectrum``.

Subcommands live in :data:`COMMANDS`; adding one is a call to :func:`register_command` with a function that adds its
arguments to an ``argparse`` parser and a handler returning the exit status, or, for a module that already has a
``main(argv)``, one line::

    register_forwarding_command("cards", "regenerate the reference model cards", "hf_subspace.cards:main")

Heavy imports (transformers, datasets) happen inside the handlers, so ``hf-subspace --help`` stays light.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "COMMANDS",
    "QUICKSTART_MLP",
    "QUICKSTART_TOY",
    "RECIPE_NAMES",
    "Command",
    "main",
    "register_command",
    "register_forwarding_command",
]

logger = logging.getLogger("hf_subspace.cli")


@dataclass(frozen=True)
class Command:
    """A subcommand: its help line, an ``add_arguments(parser)`` function and a ``handler(namespace) -> int``."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[argparse.Namespace], int]
    add_help: bool = True
    forward: bool = False


COMMANDS: dict[str, Command] = {}


def register_command(
    name: str,
    help: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    handler: Callable[[argparse.Namespace], int],
    add_help: bool = True,
    forward: bool = False,
) -> Command:
    """Register (or replace) a subcommand of ``hf-subspace``.

    Args:
        name: the subcommand.
        help: its one-line description in ``hf-subspace --help``.
        add_arguments: adds the subcommand's arguments to its ``argparse`` parser.
        handler: runs it from the parsed namespace; returns the exit status.
        add_help: give the subparser its own ``-h/--help`` (``False`` when the handler forwards ``--help``).
        forward: skip ``argparse``: the handler gets ``Namespace(argv=[every argument after the subcommand])``.
    """
    COMMANDS[name] = Command(name, help, add_arguments, handler, add_help, forward)
    return COMMANDS[name]


def register_forwarding_command(name: str, help: str, target: str) -> Command:
    """Register a subcommand that hands all its arguments to ``main(argv) -> int`` of another module.

    ``target`` is ``"package.module:function"``, imported only when the subcommand runs, e.g.
    ``register_forwarding_command("cards", "regenerate the reference model cards", "hf_subspace.cards:main")``.
    """
    module_name, _, function = target.partition(":")

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("argv", nargs=argparse.REMAINDER, help=f"arguments of {target}")

    def handler(ns: argparse.Namespace) -> int:
        import importlib

        result = getattr(importlib.import_module(module_name), function or "main")(ns.argv)
        return int(result or 0)

    return register_command(name, help, add_arguments, handler, add_help=False, forward=True)


def _quiet_libraries() -> None:
    """Fewer console messages from the libraries (progress bars of saving, advisory warnings)."""
    import warnings

    import transformers
    from transformers.utils import logging as hf_logging

    transformers.logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("hf_subspace").setLevel(logging.WARNING)


# ----------------------------------------------------------------------------------------------- quickstart

QUICKSTART_TOY: list[str] = ["--logging_steps", "50"]
"""Options of the toy-quadratic run of the quick start (on top of the recipe's defaults)."""

QUICKSTART_MLP: list[str] = [
    "--dataset_name", "digits", "--num_train", "1500", "--num_validation", "297", "--hidden_sizes", "32,32",
    "--learning_rate", "0.05", "--per_device_train_batch_size", "50", "--subspace_k", "10",
    "--switch_step", "300", "--max_steps", "1500", "--subspace_refresh_steps", "10",
    "--subspace_alignment_steps", "30", "--logging_steps", "100",
]  # fmt: skip
"""Options of the MLP run of the quick start: scikit-learn's 8×8 digits (1,500 train / 297 validation), an
MLP 64-32-32-10 with tanh and MSE, SGD lr 0.05, batch 50, k = 10, switch at step 300 of 1,500."""

_QUICKSTART_MARK = "quickstart.json"


def _add_quickstart_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output_dir", default="runs/quickstart", help="where to write (default: runs/quickstart)")
    parser.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="replace an existing folder that is not an earlier quick start (an earlier quick start is replaced)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: these small models gain little from more, and on a busy 2-core machine two "
        "threads per process made the quick start 15x slower)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of both runs")
    parser.add_argument("--skip_toy", action="store_true", help="only run the MLP on digits")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")


def _check_paper_result(summary: dict[str, Any]) -> list[tuple[bool, str]]:
    runs = summary["runs"]
    checks = []
    dom, sgd, bulk = runs.get("dominant"), runs.get("sgd"), runs.get("bulk")
    if dom and dom.get("loss_at_switch"):
        ratio = dom["final_loss"] / dom["loss_at_switch"]
        checks.append((ratio >= 0.9, f"Dom-SGD stalls: final loss = {ratio:.3f} × its loss at the switch (≥ 0.9)"))
    if sgd and bulk and sgd.get("final_loss"):
        ratio = bulk["final_loss"] / sgd["final_loss"]
        ok = ratio <= 1.5 and (dom is None or bulk["final_loss"] < 0.5 * dom["final_loss"])
        checks.append((ok, f"Bulk-SGD trains like SGD: final loss = {ratio:.3f} × SGD's (≤ 1.5, well below Dom-SGD)"))
    return checks


def _run_quickstart(ns: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything the quick start needs is local
    os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
    out = Path(ns.output_dir)
    own = (out / _QUICKSTART_MARK).is_file()
    if out.is_dir() and any(out.iterdir()) and not (own or ns.overwrite_output_dir):
        print(
            f"error: {out} exists and is not an earlier quick start; pass --overwrite_output_dir or another "
            "--output_dir.",
            file=sys.stderr,
        )
        return 2
    import torch

    torch.set_num_threads(max(1, ns.threads))
    _quiet_libraries()
    from .recipes import parse_recipe_arguments, run_recipe

    common = ["--seed", str(ns.seed), "--overwrite_output_dir", "--disable_tqdm", str(bool(ns.no_progress)).lower()]
    started = time.perf_counter()
    report: dict[str, Any] = {"runs": {}}
    jobs = [] if ns.skip_toy else [("toy_quadratic", "toy_quadratic", QUICKSTART_TOY)]
    jobs.append(("mlp_mnist", "mlp_digits", QUICKSTART_MLP))
    all_ok = True
    for recipe, folder, options in jobs:
        print(f"\n== {recipe}{' on scikit-learn digits' if folder == 'mlp_digits' else ''} ==")
        ra, ta = parse_recipe_arguments(recipe, [*options, *common, "--output_dir", str(out / folder)])
        t0 = time.perf_counter()
        result = run_recipe(recipe, ra, ta)
        checks = _check_paper_result(result.summary)
        for ok, text in checks:
            print(("  ✓ " if ok else "  ✗ ") + text)
            all_ok &= ok or recipe == "toy_quadratic"
        report["runs"][folder] = {
            "summary": str(result.summary_path),
            "figure": str(result.figure_path),
            "seconds": round(time.perf_counter() - t0, 1),
            "table": result.table(),
            "checks": [{"ok": ok, "text": text} for ok, text in checks],
        }
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["threads"] = torch.get_num_threads()
    (out / _QUICKSTART_MARK).write_text(json.dumps(report, indent=2))
    print(f"\nquick start finished in {report['seconds']:.0f} s; figures and summaries under {out}/")
    print(f"TensorBoard: tensorboard --logdir {out}")
    return 0 if all_ok else 1


# ----------------------------------------------------------------------------------------------- run


RECIPE_NAMES = ("toy_quadratic", "mlp_mnist", "cnn_cifar10", "transformer_sst2", "finetune")
"""The registered recipes (``hf_subspace.recipes.RECIPES``), listed here so ``--help`` needs no heavy import."""


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help=f"the experiment to run: {', '.join(RECIPE_NAMES)}")
    parser.add_argument(
        "options",
        nargs=argparse.REMAINDER,
        help="a YAML/JSON config and/or --option value pairs of the recipe (see `hf-subspace run RECIPE --help`)",
    )


def _run_recipe(ns: argparse.Namespace) -> int:
    from .recipes import main as recipe_main

    recipe_main(ns.recipe, ns.options)
    return 0


# ----------------------------------------------------------------------------------------------- spectrum


def _add_spectrum_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", help="a saved model (e.g. an experiment's branch folder)")
    parser.add_argument("--k", type=int, default=10, help="size of the dominant subspace to highlight")
    parser.add_argument("--num_eigenvalues", type=int, default=None, help="eigenvalues to compute (default 2k)")
    parser.add_argument("--num_samples", type=int, default=1000, help="Hessian dataset: the first N training examples")
    parser.add_argument("--batch_size", type=int, default=250, help="batch size of the Hessian passes")
    parser.add_argument("--recipe", default=None, help="recipe whose data to use (default: read from model_dir)")
    parser.add_argument("--dataset_name", default=None, help="dataset (default: the one the model was trained on)")
    parser.add_argument("--train_file", default=None, help="local training file instead of the dataset")
    parser.add_argument("--method", default=None, choices=["lanczos", "lobpcg", "eigsh"], help="eigensolver")
    parser.add_argument("--output_dir", default=None, help="where to write spectrum.json/png (default: model_dir)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the start vectors")


def _load_saved_model(model_dir: Path) -> Any:
    import transformers
    from transformers import AutoConfig

    from . import models
    from .models import toy

    config = AutoConfig.from_pretrained(model_dir)
    for arch in config.architectures or []:
        cls = getattr(models, arch, None) or getattr(toy, arch, None) or getattr(transformers, arch, None)
        if cls is not None:
            return cls.from_pretrained(model_dir)
    raise ValueError(f"cannot tell which model class {model_dir} holds (architectures={config.architectures})")


def _run_spectrum(ns: argparse.Namespace) -> int:
    _quiet_libraries()
    import torch
    from transformers import default_data_collator

    from ._tensor_data import to_tensor_dataset
    from .eigensolvers import top_eigenpairs
    from .hessian import HessianOperator
    from .plotting import plot_spectrum
    from .recipes import RecipeArguments, get_recipe, prepare_recipe
    from .training_args import SubspaceTrainingArguments

    model_dir = Path(ns.model_dir)
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
    options = {**{k: v for k, v in spec.defaults.items() if k in RecipeArguments.__dataclass_fields__}}
    options.update(meta.get("recipe_args") or {})
    for key in ("dataset_name", "train_file"):
        if getattr(ns, key):
            options[key] = getattr(ns, key)
            if key == "dataset_name":
                options["train_file"] = None
    options.update({"num_train": ns.num_samples, "num_validation": 1, "overwrite_output_dir": False})
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
    model = _load_saved_model(model_dir).to(ta.device)
    operator = HessianOperator(model, batches)
    num = ns.num_eigenvalues or min(2 * ns.k, operator.dim - 1)
    started = time.perf_counter()
    result = top_eigenpairs(operator, num, method=ns.method, seed=ns.seed, progress=True)
    values = [float(v) for v in result.eigenvalues]
    out = Path(ns.output_dir) if ns.output_dir else model_dir
    record = {
        "model_dir": str(model_dir),
        "recipe": spec.name,
        "num_samples": n,
        "k": ns.k,
        "eigenvalues": values,
        "converged": bool(result.converged),
        "hessian_vector_products": int(result.num_matvecs),
        "seconds": time.perf_counter() - started,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "spectrum.json").write_text(json.dumps(record, indent=2))
    figure = plot_spectrum(values, out / "spectrum.png", k=ns.k, title=f"Hessian spectrum of {model_dir} ({n} samples)")
    print(f"top {num} Hessian eigenvalues ({n} samples, {result.num_matvecs} Hessian-vector products):")
    for i, value in enumerate(values, start=1):
        print(f"  λ_{i:<3d} {value: .6g}" + ("   ← dominant" if i <= ns.k else ""))
    print(f"wrote {out / 'spectrum.json'} and {figure}")
    return 0


# ----------------------------------------------------------------------------------------------- entry point

register_command(
    "quickstart",
    "offline demo (a few minutes on 2 CPU cores): toy valley + MLP on scikit-learn digits",
    _add_quickstart_arguments,
    _run_quickstart,
)
register_command(
    "run", "run a recipe: hf-subspace run mlp_mnist [config.yaml] [--option value ...]", _add_run_arguments, _run_recipe
)
register_command(
    "spectrum", "top Hessian eigenvalues (and a plot) of a saved model", _add_spectrum_arguments, _run_spectrum
)
register_forwarding_command("cards", "regenerate the reference model cards in model_cards/", "hf_subspace.cards:main")


def build_parser() -> argparse.ArgumentParser:
    """The ``hf-subspace`` argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="hf-subspace",
        description="Dominant- and bulk-subspace projected training (Song, Ahn & Yun, ICLR 2025).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS.values():
        sub_parser = sub.add_parser(
            command.name, help=command.help, description=command.help, add_help=command.add_help
        )
        command.add_arguments(sub_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hf-subspace`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"] and len(argv) >= 3 and argv[2] in ("-h", "--help"):
        from .recipes import parse_recipe_arguments  # the recipe's own option list

        parse_recipe_arguments(argv[1], ["--help"])
        return 0
    forwarded = argv[:1] and argv[0] in COMMANDS and COMMANDS[argv[0]].forward
    ns = argparse.Namespace(command=argv[0], argv=argv[1:]) if forwarded else build_parser().parse_args(argv)
    try:
        return COMMANDS[ns.command].handler(ns)
    except (ValueError, FileNotFoundError) as err:  # invalid options, missing files, refused output folders
        if os.environ.get("HF_SUBSPACE_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
