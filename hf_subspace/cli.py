"""The ``hf-subspace`` command: ``quickstart``, ``run <recipe>``, ``spectrum``, ``cards``: a thin face over
:mod:`hf_subspace.experiments`.

Subcommands live in :data:`COMMANDS`; adding one is a call to :func:`register_command` with a function that adds its
arguments to an ``argparse`` parser and a handler returning the exit status, or, for a module that already has a
``main(argv)``, one line::

    register_forwarding_command("mine", "my tool", "my_package.my_module:main")

Heavy imports (torch, transformers, datasets) happen inside the handlers, so ``hf-subspace --help`` and argument
errors stay light: this module imports only :mod:`hf_subspace.experiments.settings` (plain Python).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from .experiments.settings import RECIPE_NAMES

__all__ = [
    "COMMANDS",
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


# ----------------------------------------------------------------------------------------------- quickstart


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
        help="torch threads (default 1: these small models gain little from more threads)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of both runs")
    parser.add_argument("--skip_toy", action="store_true", help="only run the MLP on digits")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    parser.add_argument("--max_steps", type=int, default=None, help="shorter runs: steps of both runs (a smoke test)")
    parser.add_argument("--switch_step", type=int, default=None, help="with --max_steps: the switch step of both runs")
    parser.add_argument(
        "--update_readme",
        action="append",
        default=None,
        metavar="FILE",
        help="afterwards, rewrite the quick-start block(s) of this Markdown file (e.g. README.md) with the measured "
        "tables (repeatable)",
    )
    parser.add_argument(
        "--from_report",
        action="store_true",
        help="with --update_readme: take the numbers of the quick start already in --output_dir (quickstart.json) "
        "instead of running it again",
    )


def _run_quickstart(ns: argparse.Namespace) -> int:
    from .experiments.quickstart import QUICKSTART_MARK, run_quickstart, update_readme

    extra: list[str] = []
    for option in ("max_steps", "switch_step"):
        if getattr(ns, option) is not None:
            extra += [f"--{option}", str(getattr(ns, option))]
    status = 0
    if not ns.from_report:
        status = _quickstart(ns, extra, run_quickstart)
        if status == 2:  # refused output folder: nothing measured
            return status
    for readme in ns.update_readme or []:
        changed = update_readme(readme, Path(ns.output_dir) / QUICKSTART_MARK)
        print(f"{readme}: quick-start block {'updated' if changed else 'already up to date'}")
    return status


def _quickstart(ns: argparse.Namespace, extra: list[str], run_quickstart: Callable[..., int]) -> int:
    return run_quickstart(
        ns.output_dir,
        overwrite_output_dir=ns.overwrite_output_dir,
        threads=ns.threads,
        seed=ns.seed,
        skip_toy=ns.skip_toy,
        no_progress=ns.no_progress,
        extra_options=tuple(extra),
    )


# ----------------------------------------------------------------------------------------------- run


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help=f"the experiment to run: {', '.join(RECIPE_NAMES)}")
    parser.add_argument(
        "options",
        nargs=argparse.REMAINDER,
        help="a YAML/JSON config and/or --option value pairs of the recipe (see `hf-subspace run RECIPE --help`)",
    )


def _run_recipe(ns: argparse.Namespace) -> int:
    from .experiments.recipes import console_main  # the error path shared with python recipes/<recipe>.py

    return console_main(ns.recipe, ns.options)


# ----------------------------------------------------------------------------------------------- spectrum


def _add_spectrum_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", help="a saved model (e.g. an experiment's branch folder)")
    parser.add_argument("--k", type=int, default=10, help="size of the dominant subspace to highlight")
    parser.add_argument("--num_eigenvalues", type=int, default=None, help="eigenvalues to compute (default 2k)")
    parser.add_argument("--num_samples", type=int, default=1000, help="Hessian dataset: the first N training examples")
    parser.add_argument("--batch_size", type=int, default=250, help="batch size of the Hessian passes")
    parser.add_argument("--recipe", default=None, help="recipe whose data to use (default: read from model_dir)")
    parser.add_argument("--dataset_name", default=None, help="dataset (default: the one the model was trained on)")
    parser.add_argument(
        "--train_file", default=None, help="local training file (default: the one recorded in model_dir, if any)"
    )
    parser.add_argument("--method", default=None, choices=["lanczos", "lobpcg", "eigsh"], help="eigensolver")
    parser.add_argument("--output_dir", default=None, help="where to write spectrum.json/png (default: model_dir)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the start vectors")
    parser.add_argument(
        "--loss",
        default=None,
        choices=["model", "mse", "cross_entropy"],
        help="loss whose Hessian to take: the model's own (model(**batch).loss), or MSE / cross-entropy on its logits "
        "(default: the loss the run trained)",
    )
    parser.add_argument("--trace", action="store_true", help="also estimate the Hessian trace (Hutch++)")
    parser.add_argument("--trace_matvecs", type=int, default=99, help="Hessian-vector products of the trace")
    parser.add_argument("--density", action="store_true", help="also the spectral density (stochastic Lanczos)")
    parser.add_argument("--density_probes", type=int, default=10, help="random probes of the density")
    parser.add_argument("--density_steps", type=int, default=80, help="Lanczos steps per density probe")
    parser.add_argument("--log_density", action="store_true", help="draw the density on a log scale")
    parser.add_argument(
        "--graph_cache_bytes",
        type=int,
        default=None,
        help="memory budget (bytes) for keeping the batches' forward graphs between Hessian-vector products; 0 "
        "rebuilds them for every product (least memory), default: a quarter of the free memory",
    )


def _run_spectrum(ns: argparse.Namespace) -> int:
    from .experiments.spectrum import run_spectrum

    return run_spectrum(ns)


# ----------------------------------------------------------------------------------------------- cards

CARDS_SCRIPT = Path("model_cards") / "regenerate.py"
"""The repository's card regenerator, relative to a checkout (it knows the repository's runs and data paths)."""


def _add_cards_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("argv", nargs=argparse.REMAINDER, help=f"[--repo PATH] and the options of {CARDS_SCRIPT}")


def _run_cards(ns: argparse.Namespace) -> int:
    """Find ``model_cards/regenerate.py`` in ``--repo PATH`` (default: the current folder) and run its ``main``."""
    argv, repo = list(ns.argv), Path(".")
    for i, item in enumerate(argv):
        if item == "--repo" and i + 1 < len(argv):
            repo, argv = Path(argv[i + 1]), argv[:i] + argv[i + 2 :]
            break
        if item.startswith("--repo="):
            repo, argv = Path(item.split("=", 1)[1]), argv[:i] + argv[i + 1 :]
            break
    script = repo / CARDS_SCRIPT
    if not script.is_file():
        raise FileNotFoundError(
            f"{script} not found: `hf-subspace cards` regenerates a repository checkout's model_cards/; run it from "
            "the repository root or pass --repo PATH."
        )
    spec = importlib.util.spec_from_file_location("hf_subspace_regenerate_cards", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return int(module.main(argv) or 0)


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
register_command(
    "cards",
    "regenerate a checkout's reference model cards (model_cards/regenerate.py; --repo PATH, default .)",
    _add_cards_arguments,
    _run_cards,
    add_help=False,
    forward=True,
)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (not the whole usage first) and that refuses abbreviations."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (`{self.prog} --help` lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``hf-subspace`` argument parser with every registered subcommand."""
    parser = _Parser(
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
        return _run_recipe(argparse.Namespace(recipe=argv[1], options=["--help"]))  # the recipe's own option list
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
