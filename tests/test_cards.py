"""``hf-subspace cards``: reference cards from a tiny run, and claims computed from the summaries."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from hf_subspace.experiments.card_text import render_index
from hf_subspace.experiments.claims import evaluate_claims

REPO = Path(__file__).resolve().parents[1]


def _load_regenerate():
    """The repository's ``model_cards/regenerate.py`` (not part of the installed package)."""
    spec = importlib.util.spec_from_file_location("regenerate_cards_under_test", REPO / "model_cards" / "regenerate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


regen = _load_regenerate()


@pytest.fixture(scope="module")
def quick_cards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """The toy quadratic's reference cards in quick mode (a dozen steps), written into a temporary folder."""
    tmp = tmp_path_factory.mktemp("cards")
    toy = [r for r in regen.REFERENCE_RUNS if r.name == "toy_quadratic"]
    entries = regen.regenerate(tmp / "model_cards", runs=toy, work_dir=tmp / "work", quick=True)
    return tmp / "model_cards", entries


def test_branch_card_is_a_hub_model_card(quick_cards: tuple[Path, list[dict]]) -> None:
    root, entries = quick_cards
    assert [e["run"] for e in entries] == ["toy_quadratic"]
    for branch in ("sgd", "gd", "dominant", "bulk"):
        path = root / "toy_quadratic" / branch / "README.md"
        card = ModelCard.load(path)
        assert card.data.library_name == "transformers"
        assert "hf-subspace" in card.data.tags and "toy_quadratic" in card.data.tags
        for section in (
            "## Model",
            "## Training procedure",
            "## Results",
            "## Reference run",
            "### Differences from the paper's setup",
            "## Framework versions",
            "## Citation",
        ):
            assert section in card.text, (branch, section)
        assert "hf-subspace run toy_quadratic" in card.text and "--max_steps 12" in card.text
        assert "Machine:" in card.text and "](../figure.png)" in card.text
        # an unprojected branch's basis only measures χ_k, and its card says so
        assert ("only to measure χ_k" in card.text) == (branch in ("sgd", "gd")), branch
    assert (root / "toy_quadratic" / "figure.png").stat().st_size > 1000
    assert (root / "toy_quadratic" / "summary.json").is_file()
    # no weights or TensorBoard events in the cards folder
    names = [p.name for p in root.rglob("*") if p.is_file()]
    assert not [n for n in names if n.endswith((".safetensors", ".bin")) or "tfevents" in n]


def test_index_numbers_come_from_the_summary(quick_cards: tuple[Path, list[dict]]) -> None:
    root, entries = quick_cards
    index = (root / "README.md").read_text()
    sgd = entries[0]["summary"]["runs"]["sgd"]
    assert f"| {sgd['final_loss']:.4g} |" in index
    assert "cnn_cifar10" in index and "not run" in index
    assert "| Dom-SGD fails to train (paper: yes) | toy_quadratic |" in index
    # the tally above the claims table counts the table's rows
    rows = [line for line in index.splitlines() if "(paper: " in line and line.startswith("| ")]
    tally = next(line for line in index.splitlines() if line.startswith("Answers: "))
    counts = [int(word) for word in tally.replace(":", " ").split() if word.isdigit()]
    assert sum(counts[:3]) + counts[-1] == len(rows) and counts[0] == sum("(agrees)" in r for r in rows)
    # every seed of the multi-seed run is in the stored summary, and the card shows them
    seeds = entries[0]["summary"]["seed_summaries"]
    assert sorted(seeds) == ["1", "2"] and all(s["seed"] == int(k) for k, s in seeds.items())
    card = (root / "toy_quadratic" / "sgd" / "README.md").read_text()
    assert "| seed | switch step |" in card and (root / "toy_quadratic" / "seeds.png").stat().st_size > 1000
    # rebuilt from the stored summaries alone, the index is the same
    regen.regenerate(root, index_only=True)
    assert (root / "README.md").read_text() == index


def _summary() -> dict:
    def run(final: float, chi: float, mode: str = "none", full_batch: bool = False) -> dict:
        # the loss falls geometrically from 1.0 at the switch (step 10) to `final` at step 20
        curve = [[s, final ** ((s - 10) / 10)] for s in range(10, 21)]
        return {"loss_at_switch": 1.0, "final_loss": final, "mean_chi_k": chi, "chi_k_at_switch": 0.9,
                "loss_curve": curve, "chi_k_curve": [[s, chi] for s in range(10, 21)], "subspace_mode": mode,
                "full_batch": full_batch}  # fmt: skip

    return {
        "recipe": "synthetic",
        "k": 1,
        "switch_step": 10,
        "max_steps": 20,
        "runs": {
            "sgd": run(0.2, 0.95),
            "gd": run(0.2, 0.01, full_batch=True),
            "dominant": run(1.0, 0.95, "dominant"),
            "bulk": run(0.25, 0.9, "bulk"),
        },
    }


def _answers(summary: dict) -> dict[str, str]:
    return {c.claim: c.answer for c in evaluate_claims("synthetic", summary)}


def test_claims_follow_the_numbers() -> None:
    summary = _summary()
    assert _answers(summary) == {
        "Dom-SGD fails to train": "yes",
        "Bulk-SGD is as effective as SGD": "yes",
        "SGD→GD loses the alignment": "yes",
        "GD→SGD restores the alignment": "n/a",
    }
    moving = copy.deepcopy(summary)
    moving["runs"]["dominant"]["final_loss"] = 0.3  # Dom-SGD keeps training: the paper's claim fails
    moving["runs"]["bulk"]["final_loss"] = 0.9  # and Bulk-SGD falls behind SGD
    moving["runs"]["gd"]["mean_chi_k"] = 0.9  # and GD stays aligned
    answers = _answers(moving)
    assert answers["Dom-SGD fails to train"] == "no"
    assert answers["Bulk-SGD is as effective as SGD"] == "no"
    assert answers["SGD→GD loses the alignment"] == "no"
    index = render_index([{"run": "synthetic", "recipe": "toy", "summary": moving, "command": "x"}])
    assert "| Dom-SGD fails to train (paper: yes) | synthetic | **no** (disagrees) | progress" in index
    flat = copy.deepcopy(summary)
    flat["runs"]["sgd"]["final_loss"] = 0.97  # SGD itself barely moved: a Dom/Bulk verdict says nothing
    assert _answers(flat)["Dom-SGD fails to train"] == "inconclusive"
    del moving["runs"]["gd"]
    assert _answers(moving)["SGD→GD loses the alignment"] == "n/a"
    # a run without projected branches (the GPU-run SST-2 and ViT cards) says which branch is missing
    unprojected = copy.deepcopy(summary)
    del unprojected["runs"]["dominant"], unprojected["runs"]["bulk"]
    claims = {c.claim: c for c in evaluate_claims("synthetic", unprojected)}
    assert claims["Dom-SGD fails to train"].answer == "n/a"
    assert claims["Dom-SGD fails to train"].evidence == (
        "not run: this run has no dominant branch (its card says why; --modes adds it)"
    )
    assert "no bulk branch" in claims["Bulk-SGD is as effective as SGD"].evidence


def test_gd_prefix_restoring_alignment_is_detected() -> None:
    summary = _summary()
    summary["prefix_optimizer"] = "gd"
    summary["runs"]["sgd"]["chi_k_at_switch"] = 0.05
    answers = _answers(summary)
    assert answers["GD→SGD restores the alignment"] == "yes"
    # the other claims are about branches after an SGD prefix
    texts = ("Dom-SGD fails to train", "Bulk-SGD is as effective as SGD", "SGD→GD loses the alignment")
    assert [answers[c] for c in texts] == ["n/a"] * 3
    index = render_index([{"run": "gdp", "recipe": "toy", "summary": summary, "command": "x"}])
    assert (
        "| GD→SGD restores the alignment (paper: yes) | gdp | **yes** (agrees) | χ_k at the switch (after GD) 0.050"
        in index
    )
    stays = copy.deepcopy(summary)
    stays["runs"]["sgd"]["chi_k_curve"] = [[s, 0.08] for s in range(10, 21)]  # SGD after GD stays unaligned
    assert _answers(stays)["GD→SGD restores the alignment"] == "no"
    unmeasured = copy.deepcopy(summary)
    unmeasured["runs"]["sgd"]["chi_k_at_switch"] = None  # alignment interval not dividing the switch step
    claim = next(c for c in evaluate_claims("x", unmeasured) if c.claim.startswith("GD→SGD"))
    assert claim.answer == "n/a" and "--subspace_alignment_steps" in claim.evidence
    del unmeasured["runs"]["sgd"]
    assert _answers(unmeasured)["GD→SGD restores the alignment"] == "n/a"


def test_sgd_prefix_points_to_the_gd_prefix_run() -> None:
    claim = next(c for c in evaluate_claims("x", _summary(), regen.gd_prefix_run("x")) if c.claim.startswith("GD→SGD"))
    assert claim.answer == "n/a" and "--prefix gd" in claim.evidence and "reference run" not in claim.evidence
    # a run points at the GD-prefix run of its own recipe, never at another model's (the toy's)
    assert regen.gd_prefix_run("toy_quadratic") == regen.GD_PREFIX_RUN
    assert regen.gd_prefix_run("mlp_digits") == regen.gd_prefix_run("mlp_mnist_sgd") == "mlp_digits_gd_prefix"
    assert regen.gd_prefix_run("transformer_sst2") == "transformer_sst2_gd_prefix"
    assert regen.gd_prefix_run("vit_cifar10") == "vit_cifar10_gd_prefix"
    # amplification is judged against the SGD run of the same data and model, named by the repository's list
    assert regen.amplification_baseline("mlp_mnist_momentum") == "mlp_mnist_sgd"
    assert regen.amplification_baseline("mlp_mnist_sgd") is regen.amplification_baseline("mlp_digits") is None
    run = next(r for r in regen.REFERENCE_RUNS if r.name == regen.GD_PREFIX_RUN)
    command = run.command(Path("data"), Path("out"))
    assert command.startswith("hf-subspace run toy_quadratic ") and "--prefix gd --modes sgd,gd" in command
    # the alignment interval (the recipe's 25, quick mode's 3) divides the switch step, so χ_k is measured there
    from hf_subspace.experiments.recipes import RECIPES, parse_recipe_arguments

    assert RECIPES["toy_quadratic"].defaults["subspace_alignment_steps"] == 25
    for quick in (False, True):
        ra, ta = parse_recipe_arguments(run.recipe, run.argv(Path("data"), Path("out"), quick))
        assert ra.prefix == "gd" and ra.switch_step % ta.subspace_alignment_steps == 0


def test_reference_commands_name_every_option_once() -> None:
    """A recorded command that names an option twice (``--seed 0 ... --seed 1``) reads as two settings; the runs'
    definitions merge their option groups instead, and every seed's command names ``--seed`` once."""
    for run in regen.REFERENCE_RUNS:
        argv = run.argv(Path("data"), Path("out"), seed=run.seeds[-1] if len(run.seeds) > 1 else None)
        flags = [a for a in argv if a.startswith("--")]
        assert len(flags) == len(set(flags)), (run.name, sorted({f for f in flags if flags.count(f) > 1}))
    assert regen._merge(("--a", "1", "--b", "2"), ("--a", "3", "--c", "4")) == ("--a", "3", "--b", "2", "--c", "4")
    with pytest.raises(ValueError, match="flag, value pairs"):
        regen._merge(("--a", "1", "--flag_without_value"))


def test_gd_prefix_reference_run_answers_the_claim(tmp_path: Path) -> None:
    """The GD-prefix reference run in quick mode: its cards and the index answer GD→SGD from its summary."""
    run = [r for r in regen.REFERENCE_RUNS if r.name == regen.GD_PREFIX_RUN]
    entries = regen.regenerate(tmp_path / "cards", runs=run, work_dir=tmp_path / "work", quick=True)
    summary = entries[0]["summary"]
    assert summary["prefix_optimizer"] == "gd" and list(summary["runs"]) == ["sgd", "gd"]
    assert len(summary["seed_summaries"]) == len(run[0].seeds) - 1
    index = (tmp_path / "cards" / "README.md").read_text()
    assert f"| GD→SGD restores the alignment (paper: yes) | {regen.GD_PREFIX_RUN} | **yes** (agrees) |" in index
    card = (tmp_path / "cards" / regen.GD_PREFIX_RUN / "sgd" / "README.md").read_text()
    assert "leaving a shared full-batch GD prefix at step 6 (a fixed step) of 12" in card


def test_main_rejects_unknown_run() -> None:
    with pytest.raises(SystemExit):
        regen.main(["--only", "nope"])


def test_adopt_writes_cards_from_a_finished_experiment(quick_cards: tuple[Path, list[dict]], tmp_path: Path) -> None:
    """``cards --adopt RUN=FOLDER``: the cards of a run made outside ``hf-subspace cards``, numbers from its summary."""
    import json
    import shutil

    from hf_subspace.experiments.cards import adopt_run

    root, _ = quick_cards
    toy = next(r for r in regen.REFERENCE_RUNS if r.name == "toy_quadratic")
    # A copy of the quick fixture's experiment folder (work_dir/<run>/seed-<s>: summary.json, one folder per branch).
    work = shutil.copytree(root.parent / "work" / "toy_quadratic", tmp_path / "experiment")
    summary = json.loads((work / "seed-0" / "summary.json").read_text())
    for branch in summary["runs"].values():  # an older summary without these fields is accepted
        branch.pop("mode", None)
    (work / "seed-0" / "summary.json").write_text(json.dumps(summary))
    entry = adopt_run(toy, work, tmp_path / "cards", Path("../shared/data"), Path("runs/cards"))
    assert entry["run"] == "toy_quadratic"
    card = (tmp_path / "cards" / "toy_quadratic" / "bulk" / "README.md").read_text()
    final = summary["runs"]["bulk"]["final_loss"]
    assert f"{final:.4g}" in card or f"{final:.4f}" in card
    assert "hf-subspace run toy_quadratic" in card and "--output_dir runs/cards/toy_quadratic/seed-0" in card
    assert len(entry["summary"]["seed_summaries"]) == 2
    assert (tmp_path / "cards" / "toy_quadratic" / "figure.png").stat().st_size > 1000
    assert "no GPU" in card  # without machine.json: this machine (the tests run on a CPU)


def test_adopt_names_the_machine_the_run_ran_on(quick_cards: tuple[Path, list[dict]], tmp_path: Path) -> None:
    """A run made elsewhere (``gpu_paper_runs.sh`` on a lent GPU) leaves ``machine.json`` beside its summary: the
    cards name that machine, not the one that adopts it."""
    import json
    import shutil

    from hf_subspace.experiments.cards import adopt_run

    root, _ = quick_cards
    toy = next(r for r in regen.REFERENCE_RUNS if r.name == "toy_quadratic")
    work = shutil.copytree(root.parent / "work" / "toy_quadratic", tmp_path / "experiment")
    machine = {"cpu": "host X", "cores": 16, "torch_threads": 2, "gpu": "NVIDIA H200", "platform": "Linux, torch Y"}
    (work / "seed-0" / "machine.json").write_text(json.dumps(machine))
    adopt_run(toy, work, tmp_path / "cards", Path("../shared/data"), Path("runs/cards"))
    card = (tmp_path / "cards" / "toy_quadratic" / "sgd" / "README.md").read_text()
    assert "Machine: host X, 16 cores, 2 torch threads, NVIDIA H200; Linux, torch Y." in card


def test_from_summary_rewrites_text_and_figures_not_numbers(quick_cards: tuple[Path, list[dict]], tmp_path) -> None:
    """``cards --from_summary RUN``: a card's text follows the run's current differences, its figures are redrawn,
    and its numbers, command and machine stay those of the stored summary (nothing is run)."""
    import dataclasses
    import json
    import shutil

    from hf_subspace.experiments.cards import rewrite_from_summary

    root, _ = quick_cards
    cards = shutil.copytree(root / "toy_quadratic", tmp_path / "toy_quadratic")
    before = json.loads((cards / "summary.json").read_text())
    (cards / "figure.png").unlink()
    toy = next(r for r in regen.REFERENCE_RUNS if r.name == "toy_quadratic")
    changed = dataclasses.replace(toy, differences=("A difference written after the run.",))
    rewrite_from_summary(changed, cards)
    card = (cards / "bulk" / "README.md").read_text()
    assert "A difference written after the run." in card and toy.differences[0] not in card
    assert card.count("## Reference run") == 1 and card.count("## Framework versions") == 1
    assert json.loads((cards / "summary.json").read_text()) == before
    assert before["reference_run"]["command"] in card
    assert (cards / "figure.png").stat().st_size > 1000 and (cards / "seeds.png").is_file()
    rewrite_from_summary(changed, cards)  # idempotent
    assert (cards / "bulk" / "README.md").read_text() == card
    with pytest.raises(FileNotFoundError, match="--only toy_quadratic"):
        rewrite_from_summary(toy, tmp_path / "empty")


def test_edge_of_stability_separates_the_prefix_from_the_branch() -> None:
    """A sharp initialisation (η·λ₁ = 4 at step 0) must not make a branch that stays at η·λ₁ = 1.5 look like an
    edge-of-stability run: the card shows the prefix's and the branch's maxima apart."""
    from hf_subspace.experiments.card_text import edge_of_stability

    curve = [[0, 40.0], [50, 12.0], [100, 13.0], [150, 15.0], [200, 14.0]]
    summary = {"switch_step": 100, "learning_rate": 0.1, "runs": {"sgd": {"curves": {"eigenvalue_top_01": curve}}}}
    assert edge_of_stability(summary, "sgd", "prefix") == pytest.approx(4.0)
    assert edge_of_stability(summary, "sgd", "branch") == pytest.approx(1.5)
    assert edge_of_stability(summary, "sgd") == pytest.approx(4.0)
    assert edge_of_stability(summary, "sgd", "prefix", skip_init=True) == pytest.approx(1.3)  # the card's prefix value
    assert edge_of_stability({**summary, "runs": {"sgd": {}}}, "sgd", "branch") is None
