"""``hf-subspace cards``: the command line over a repository's reference runs.

A repository describes its runs once (:class:`CardsRepository`: the list of :class:`~.cards.ReferenceRun`, its cards
folder, the offline data its commands name, the runs without a card and why); :func:`cards_main` is the command line
(run, ``--adopt``, ``--from_summary``, ``--index_only``). ``model_cards/regenerate.py`` holds this repository's runs.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cards import ReferenceRun, adopt_run, regenerate_cards, rewrite_from_summary

__all__ = ["CardsRepository", "cards_main"]

SHOWN_DATA = Path("../shared/data")
"""How the commands on the cards name the offline data: relative to the repository root."""


@dataclass(frozen=True)
class CardsRepository:
    """A repository's reference runs and where their cards and data live.

    Attributes:
        runs: every reference run, in the index's order.
        cards_dir: the cards folder (``model_cards/``).
        shared_data: the offline data beside the repository root (``../shared/data``); shown as
            :data:`SHOWN_DATA` in the cards' commands.
        unavailable: ``{run: why}`` for runs listed in the index without a card.
        gd_prefix_run: the run that answers GD→SGD for a given run, if any.
        amplification_baseline: the SGD run a momentum/Adam run's amplification is compared with, if any.
    """

    runs: tuple[ReferenceRun, ...]
    cards_dir: Path
    shared_data: Path
    unavailable: Mapping[str, str] = field(default_factory=dict)
    gd_prefix_run: Callable[[str], str | None] | None = None
    amplification_baseline: Callable[[str], str | None] | None = None

    def data_root(self, given: str | Path | None = None) -> Path:
        """``given``, else ``$HF_SUBSPACE_DATA``, else :attr:`shared_data`."""
        if given is not None:
            return Path(given)
        env = os.environ.get("HF_SUBSPACE_DATA")
        return Path(env) if env else self.shared_data

    def shown_root(self, data: Path) -> Path:
        """The data root as the cards' commands write it: :data:`SHOWN_DATA` for the shared data, else ``data``."""
        return SHOWN_DATA if data.resolve() == self.shared_data.resolve() else data

    def regenerate(
        self,
        output_root: str | Path | None = None,
        runs: Sequence[ReferenceRun] | None = None,
        work_dir: str | Path = "runs/cards",
        data_root: str | Path | None = None,
        quick: bool = False,
        index_only: bool = False,
    ) -> list[dict[str, Any]]:
        """:func:`~.cards.regenerate_cards` over this repository's runs (``runs``: those to do, default all)."""
        data = self.data_root(data_root)
        return regenerate_cards(
            self.runs,
            self.cards_dir if output_root is None else output_root,
            data,
            runs=runs,
            work_dir=work_dir,
            quick=quick,
            index_only=index_only,
            unavailable=self.unavailable,
            shown_data_root=self.shown_root(data),
            gd_prefix_run=self.gd_prefix_run,
            amplification_baseline=self.amplification_baseline,
        )


def cards_main(repo: CardsRepository, argv: Sequence[str] | None = None) -> int:
    """``hf-subspace cards``: regenerate ``repo``'s cards from fresh runs (``--only``), from runs made elsewhere
    (``--adopt``) or from their stored summaries (``--from_summary``, ``--index_only``); returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="hf-subspace cards", description="Regenerate the reference model cards in model_cards/."
    )
    parser.add_argument("--output_root", default=str(repo.cards_dir), help="cards folder (default: model_cards/)")
    parser.add_argument("--work_dir", default="runs/cards", help="where the experiments write (default: runs/cards)")
    parser.add_argument("--data_root", default=None, help="offline data (default: $HF_SUBSPACE_DATA or ../shared/data)")
    parser.add_argument("--only", action="append", default=None, help="run only this reference run (repeatable)")
    parser.add_argument("--quick", action="store_true", help="a few steps per run (smoke test)")
    parser.add_argument("--index_only", action="store_true", help="only rebuild README.md from stored summaries")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: min(2, cores))")
    parser.add_argument(
        "--adopt",
        action="append",
        default=None,
        metavar="RUN=FOLDER",
        help="write RUN's cards from an experiment already run with RUN's options into FOLDER (repeatable)",
    )
    parser.add_argument(
        "--from_summary",
        action="append",
        default=None,
        metavar="RUN",
        help="rewrite RUN's cards (figures, card text, claims) from the summary.json in its card folder, running "
        "nothing; 'all' for every card (repeatable)",
    )
    ns = parser.parse_args(argv)
    known = {r.name: r for r in repo.runs}
    if ns.from_summary:
        names = [r.name for r in repo.runs] if "all" in ns.from_summary else ns.from_summary
        wrong = [n for n in names if n not in known]
        if wrong:
            parser.error(f"--from_summary: unknown run(s) {', '.join(wrong)}; choose from all, {', '.join(known)}")
        for name in names:
            if "all" in ns.from_summary and not (Path(ns.output_root) / name / "summary.json").is_file():
                continue  # no card yet (listed in the index with why)
            rewrite_from_summary(known[name], Path(ns.output_root) / name)
            print(f"{name}: cards rewritten from {Path(ns.output_root) / name / 'summary.json'}")
        repo.regenerate(ns.output_root, None, ns.work_dir, ns.data_root, False, True)
        return 0
    unknown = [n for n in ns.only or [] if n not in known]
    if unknown:
        parser.error(f"unknown run(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    import torch

    torch.set_num_threads(ns.threads or max(1, min(2, os.cpu_count() or 1)))
    if ns.adopt:
        data = repo.data_root(ns.data_root)
        shown = repo.shown_root(data)
        for item in ns.adopt:
            name, _, folder = item.partition("=")
            if name not in known or not folder:
                parser.error(f"--adopt takes RUN=FOLDER with RUN one of {', '.join(known)}; got {item!r}")
            adopt_run(known[name], folder, ns.output_root, shown, ns.work_dir, data)
        repo.regenerate(ns.output_root, None, ns.work_dir, ns.data_root, False, True)
        return 0
    runs = [known[n] for n in ns.only] if ns.only else None
    repo.regenerate(ns.output_root, runs, ns.work_dir, ns.data_root, ns.quick, ns.index_only)
    return 0
