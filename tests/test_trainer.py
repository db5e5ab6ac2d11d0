"""SubspaceTrainer: exact projection, equivalence with Trainer, the paper's phenomenon, resume, logs, bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _trainer_fixtures import DigitsMLP, base_args, digits_dataset, losses
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_subspace import SubspaceTrainer, SubspaceTrainingArguments


@pytest.fixture(scope="module")
def dataset():
    return digits_dataset(500)


class UpdateChecker(TrainerCallback):
    """Runs after the subspace callback: records each applied update and the basis it was projected with."""

    def __init__(self, trainer: SubspaceTrainer) -> None:
        self.trainer = trainer
        self.records: list[tuple[bool, float, float]] = []

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.before = [p.detach().clone() for p in self.trainer.subspace_params]
        self.basis = self.trainer.subspace_state.basis
        self.projecting = self.trainer.subspace_state.projecting

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.basis is None:
            return
        delta = [p.detach() - b for p, b in zip(self.trainer.subspace_params, self.before)]
        self.records.append((self.projecting, self.basis.dominant_fraction(delta), self.basis.bulk_fraction(delta)))


def _trainer(tmp_path: Path, dataset, model: torch.nn.Module | None = None, **overrides: Any) -> SubspaceTrainer:
    torch.manual_seed(0)
    args = SubspaceTrainingArguments(**base_args(str(tmp_path), **overrides))
    return SubspaceTrainer(model=model or DigitsMLP(), args=args, train_dataset=dataset)


PROJECTION_CASES = [
    ("sgd", None, 1, 0.0),
    ("sgd", "momentum=0.9", 2, 0.0),
    ("adamw_torch", None, 1, 0.0),
    ("adamw_torch", None, 2, 0.0),
    ("sgd", "momentum=0.9", 1, 0.05),  # SAM
]


@pytest.mark.parametrize("mode", ["dominant", "bulk"])
@pytest.mark.parametrize(("optim", "optim_args", "accumulation", "sam_rho"), PROJECTION_CASES)
def test_applied_updates_are_exactly_projected(tmp_path, dataset, mode, optim, optim_args, accumulation, sam_rho):
    trainer = _trainer(
        tmp_path,
        dataset,
        subspace_mode=mode,
        optim=optim,
        optim_args=optim_args,
        gradient_accumulation_steps=accumulation,
        per_device_train_batch_size=50 // accumulation,
        learning_rate=0.01 if optim.startswith("adam") else 0.1,
        subspace_start_step=3,
        subspace_refresh_steps=2,
        subspace_alignment_steps=2,
        max_steps=7,
        sam_rho=sam_rho,
    )
    checker = UpdateChecker(trainer)
    trainer.add_callback(checker)
    trainer.train()
    before = [r for r in checker.records if not r[0]]
    after = [r for r in checker.records if r[0]]
    assert len(after) == 4 and before, checker.records
    # Unprojected updates have both parts: the check below could fail.
    assert all(chi > 1e-2 and bulk > 1e-2 for _, chi, bulk in before)
    for _, chi, bulk in after:
        if mode == "dominant":
            assert bulk <= 1e-5 and chi > 0.99
        else:
            assert chi <= 1e-5


def test_gradient_target_projects_the_gradient(tmp_path, dataset):
    trainer = _trainer(tmp_path, dataset, subspace_mode="bulk", subspace_target="gradient", subspace_start_step=2)
    checker = UpdateChecker(trainer)
    trainer.add_callback(checker)
    trainer.train()
    projected = [chi for projecting, chi, _ in checker.records if projecting]
    unprojected = [chi for projecting, chi, _ in checker.records if not projecting]
    assert len(projected) == 6 and unprojected and all(chi > 1e-2 for chi in unprojected), checker.records
    assert all(chi <= 1e-5 for chi in projected)  # plain SGD: update ∝ gradient


def test_none_mode_trains_exactly_like_trainer(tmp_path, dataset):
    overrides = {"max_steps": 10, "optim_args": "momentum=0.9"}
    torch.manual_seed(0)
    plain_args = {
        k: v
        for k, v in base_args(str(tmp_path / "plain"), **overrides).items()
        if k not in ("subspace_k", "hessian_num_samples", "hessian_batch_size")
    }
    plain = Trainer(model=DigitsMLP(dropout=0.2), args=TrainingArguments(**plain_args), train_dataset=dataset)
    plain.train()
    torch.manual_seed(0)
    model = DigitsMLP(dropout=0.2)  # dropout draws from the global RNG: any extra draw would change the losses
    sub_args = SubspaceTrainingArguments(
        **base_args(str(tmp_path / "sub"), subspace_mode="none", subspace_alignment_steps=3, **overrides)
    )
    sub = SubspaceTrainer(model=model, args=sub_args, train_dataset=dataset)
    sub.train()
    expected, got = losses(plain.state.log_history), losses(sub.state.log_history)
    assert len(expected) == 10 and got == expected
    logged = [h for h in sub.state.log_history if "subspace/chi_k_full_grad" in h]
    assert [h["step"] for h in logged][:4] == [0, 3, 6, 9]


def test_dominant_stalls_while_bulk_trains_like_sgd(tmp_path, dataset):
    """The paper's finding on a real task: after the switch Dom-SGD stops, Bulk-SGD keeps pace with SGD."""
    final, at_switch = {}, {}
    for mode in ("none", "dominant", "bulk"):
        trainer = _trainer(
            tmp_path / mode,
            dataset,
            subspace_mode=mode,
            subspace_k=10,
            hessian_num_samples=500,
            hessian_batch_size=250,
            max_steps=100,
            subspace_start_step=30,
            subspace_alignment_steps=10,
            logging_steps=10,
        )
        trainer.train()
        curve = {
            h["step"]: h["subspace/full_train_loss"]
            for h in trainer.state.log_history
            if "subspace/full_train_loss" in h
        }
        at_switch[mode], final[mode] = curve[30], curve[100]
    assert at_switch["dominant"] == pytest.approx(at_switch["bulk"]) == pytest.approx(at_switch["none"])
    assert final["dominant"] >= 0.9 * at_switch["dominant"]
    assert final["none"] < 0.8 * at_switch["none"]
    assert final["bulk"] <= 1.5 * final["none"]
    assert final["bulk"] < 0.8 * final["dominant"]


def test_resume_after_switch_continues_exactly(tmp_path, dataset):
    overrides = {
        "subspace_mode": "bulk",
        "subspace_start_step": 3,
        "subspace_refresh_steps": 2,
        "max_steps": 10,
        "save_strategy": "steps",
        "save_steps": 5,
        "optim_args": "momentum=0.9",
        "subspace_alignment_steps": 4,
    }
    full = _trainer(tmp_path / "full", dataset, **overrides)
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-5"
    assert (checkpoint / "subspace_state.pt").is_file()
    resumed = _trainer(tmp_path / "resumed", dataset, **overrides)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    expected = losses(full.state.log_history)
    got = {step: loss for step, loss in losses(resumed.state.log_history).items() if step > 5}  # 1-5: loaded history
    assert sorted(got) == [6, 7, 8, 9, 10]
    for step in got:
        assert got[step] == pytest.approx(expected[step], rel=1e-6)
    assert resumed.subspace_state.switch_step == 3
    assert torch.allclose(resumed.subspace_state.basis.vectors, full.subspace_state.basis.vectors)


def test_tensorboard_events_hold_subspace_scalars_and_layout(tmp_path, dataset):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = _trainer(
        tmp_path,
        dataset,
        subspace_mode="dominant",
        subspace_start_step=2,
        report_to="tensorboard",
        subspace_alignment_steps=2,
        subspace_extra_eigenvalues=3,
    )
    trainer.train()
    event_dirs = {p.parent for p in tmp_path.rglob("events.out.tfevents.*")}
    assert len(event_dirs) == 1
    acc = EventAccumulator(str(event_dirs.pop()))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for name in (
        "chi_k_full_grad",
        "chi_k_minibatch_grad",
        "chi_k_update",
        "full_train_loss",
        "eigenvalue_top_01",
        "eigenvalue_top_05",
        "eigenvalue_next_06",
        "eigenvalue_next_08",
        "eigengap",
        "effective_lr_dominant",
        "effective_lr_bulk",
        "solver_hvps",
        "basis_overlap",
    ):
        assert f"train/subspace/{name}" in tags, sorted(tags)
    eigen_tags = sorted(t for t in tags if "eigenvalue_" in t)
    assert len(eigen_tags) == 8 and not any(t.endswith("_1") for t in eigen_tags)  # zero-padded, sortable
    # The gap is λ_k − λ_{k+1} of the same refresh (k = 5, three extra eigenvalues computed).
    top5, next6 = acc.Scalars("train/subspace/eigenvalue_top_05"), acc.Scalars("train/subspace/eigenvalue_next_06")
    gaps = acc.Scalars("train/subspace/eigengap")
    assert len(gaps) == len(top5) >= 2
    for gap, a, b in zip(gaps, top5, next6):
        assert gap.value == pytest.approx(a.value - b.value, rel=1e-5, abs=1e-6)
    chi = [e.value for e in acc.Scalars("train/subspace/chi_k_full_grad")]
    assert all(0.0 <= c <= 1.0 for c in chi)
    charts = _custom_scalar_charts(acc)
    assert {"top-k eigenvalues", "eigenvalues k+1..2k", "dominant vs bulk", "gradients and update"} <= charts
    texts = acc.Tensors("subspace/metric_definitions/text_summary")
    assert "effective_lr_bulk" in texts[0].tensor_proto.string_val[0].decode()


def _custom_scalar_charts(acc: Any) -> set[str]:
    from tensorboard.plugins.custom_scalar import layout_pb2

    content = acc.PluginTagToContent("custom_scalars")
    assert content, "no custom-scalars layout was written"
    layout = layout_pb2.Layout.FromString(acc.Tensors(next(iter(content)))[0].tensor_proto.string_val[0])
    return {chart.title for category in layout.category for chart in category.chart}


def test_tensorboard_layout_has_no_empty_extra_eigenvalue_chart(tmp_path, dataset):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = _trainer(tmp_path, dataset, subspace_mode="none", report_to="tensorboard", max_steps=2)
    trainer.train()
    acc = EventAccumulator(str({p.parent for p in tmp_path.rglob("events.out.tfevents.*")}.pop()))
    acc.Reload()
    charts = _custom_scalar_charts(acc)
    assert "top-k eigenvalues" in charts and "eigenvalues k+1..2k" not in charts
    assert not any("eigenvalue_next" in t for t in acc.Tags()["scalars"])


def test_model_card_records_subspace_settings(tmp_path, dataset):
    from huggingface_hub import ModelCard

    trainer = _trainer(tmp_path, dataset, subspace_mode="bulk", subspace_start_step=2, subspace_alignment_steps=2)
    trainer.train()
    trainer.create_model_card(model_name="digits-bulk")
    card = ModelCard.load(tmp_path / "README.md")
    assert "hf-subspace" in card.data.tags
    assert "Bulk-SGD" in card.text and "| switch step | 2 |" in card.text and "song2025does" in card.text
    assert "at the end" in card.text


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"subspace_mode": "sideways"}, "subspace_mode"),
        ({"subspace_k": 0}, "subspace_k"),
        ({"subspace_refresh_steps": 0}, "subspace_refresh_steps"),
        ({"subspace_target": "loss"}, "subspace_target"),
        ({"subspace_solver": "qr"}, "subspace_solver"),
        ({"subspace_ema_decay": 1.0}, "subspace_ema_decay"),
        ({"hessian_num_samples": 0}, "hessian_num_samples"),
        ({"subspace_parameter_filter": "("}, "subspace_parameter_filter"),
        ({"deepspeed": "ds_config.json"}, "DeepSpeed"),
        ({"fsdp": "full_shard", "fsdp_config": {"version": 1}}, "FSDP2 only"),
        ({"fsdp": True, "sam_rho": 0.05}, "SAM"),
        ({"fsdp": True, "subspace_solver": "eigsh"}, "eigsh"),
        ({"fsdp": True, "subspace_shard_vectors": False}, "subspace_shard_vectors"),
        ({"fsdp": True, "subspace_trace_steps": 2}, "subspace_trace_steps"),
        ({"fsdp": True, "bf16": True}, "full-precision"),
        ({"fsdp": True, "fsdp_config": {"cpu_offload": True}}, "offload"),
        ({"optim": "galore_adamw_layerwise"}, "layer"),
        ({"sam_rho": 0.05, "gradient_accumulation_steps": 2}, "sam_rho"),
    ],
)
def test_bad_arguments_fail_before_training(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        SubspaceTrainingArguments(**base_args(str(tmp_path), **overrides))


def test_bad_trainer_setups_fail_before_training(tmp_path, dataset):
    with pytest.raises(ValueError, match="subspace_k"):
        _trainer(tmp_path, dataset, subspace_k=16 * 64 + 16 + 10 * 16 + 10)
    with pytest.raises(ValueError, match="labels"):
        torch.manual_seed(0)
        SubspaceTrainer(
            model=DigitsMLP(),
            args=SubspaceTrainingArguments(**base_args(str(tmp_path))),
            train_dataset=dataset,
            hessian_dataset=dataset.remove_columns("labels"),
        )
    with pytest.raises(TypeError, match="SubspaceTrainingArguments"):
        SubspaceTrainer(
            model=DigitsMLP(), args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True), train_dataset=dataset
        )
    assert not any(tmp_path.iterdir())  # nothing written


def test_bf16_mixed_precision_projects_with_fp32_hessian(tmp_path, dataset):
    trainer = _trainer(tmp_path, dataset, subspace_mode="bulk", subspace_start_step=2, bf16=True, max_steps=5)
    checker = UpdateChecker(trainer)
    trainer.add_callback(checker)
    trainer.train()
    assert trainer.hessian_operator.dtype == torch.float32
    projected = [chi for projecting, chi, _ in checker.records if projecting]
    assert len(projected) == 3 and all(chi <= 1e-5 for chi in projected), checker.records
    assert all(chi > 1e-2 for projecting, chi, _ in checker.records if not projecting)
    assert torch.isfinite(trainer.subspace_state.basis.eigenvalues).all()


def test_switch_step_is_measured_for_the_card(tmp_path, dataset):
    trainer = _trainer(tmp_path, dataset, subspace_mode="dominant", subspace_start_step=3, subspace_alignment_steps=5)
    trainer.train()
    summary = trainer.subspace_summary()
    assert summary["switch_step"] == 3 and summary["at_switch"]["step"] == 3
    assert summary["last"]["step"] == 8


def test_transformers_sequence_classifier_with_sdpa_and_label_column(tmp_path):
    """A transformers model from a config (default SDPA attention, dropout) trains in dominant mode."""
    from datasets import Dataset
    from transformers import BertConfig, BertForSequenceClassification

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 30, (120, 8), generator=g)
    mask = torch.ones(120, 8, dtype=torch.long)
    mask[::3, 6:] = 0
    data = Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "label": (ids[:, 0] % 2).tolist()}
    )
    config = BertConfig(
        vocab_size=30,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=8,
        num_labels=2,
    )
    torch.manual_seed(0)
    # float64: with updates ~1e-3 of weights ~1, float32 parameters alone round the applied update at ~5e-5.
    model = BertForSequenceClassification(config).double()
    args = SubspaceTrainingArguments(
        **base_args(
            str(tmp_path),
            subspace_mode="dominant",
            subspace_start_step=1,
            subspace_k=2,
            max_steps=4,
            per_device_train_batch_size=20,
            hessian_num_samples=60,
            hessian_batch_size=30,
        )
    )
    trainer = SubspaceTrainer(model=model, args=args, train_dataset=data)
    checker = UpdateChecker(trainer)
    trainer.add_callback(checker)
    trainer.train()
    assert trainer.hessian_operator.num_samples == 60
    projected = [r for r in checker.records if r[0]]
    assert len(projected) == 3 and len(checker.records) == 4, checker.records
    assert all(bulk <= 1e-5 and chi > 0.99 for _, chi, bulk in projected), checker.records
    assert checker.records[0][2] > 1e-2, checker.records  # step 0, unprojected: the update has a bulk part


@pytest.mark.parametrize("mode", ["none", "dominant", "bulk"])
def test_logged_update_alignment_matches_the_applied_updates(tmp_path, dataset, mode):
    # Every step is measured and logged, so each logged chi_k_update is the χ_k of exactly one applied update.
    trainer = _trainer(
        tmp_path,
        dataset,
        subspace_mode=mode,
        subspace_start_step=0,
        subspace_alignment_steps=1,
        logging_steps=1,
        max_steps=6,
    )
    checker = UpdateChecker(trainer)
    trainer.add_callback(checker)
    trainer.train()
    logged = [r["subspace/chi_k_update"] for r in trainer.state.log_history if "subspace/chi_k_update" in r]
    measured = [chi for _, chi, _ in checker.records]
    assert len(logged) == len(measured) == 6
    if mode == "none":
        assert all(0.01 < chi < 0.99 for chi in measured), measured  # a real fraction, not a trivial 0 or 1
        assert logged == pytest.approx(measured, rel=1e-5, abs=1e-7)
    else:
        exact = 1.0 if mode == "dominant" else 0.0
        assert logged == [exact] * 6
        assert measured == pytest.approx([exact] * 6, abs=1e-4)
    minibatch = [r["subspace/chi_k_minibatch_grad"] for r in trainer.state.log_history if "subspace/chi_k_update" in r]
    assert all(0.0 < chi < 1.0 for chi in minibatch)


def test_subspace_callback_beside_a_plain_trainer_matches_subspace_trainer(tmp_path, dataset):
    """The callback needs only its collaborators: a plain Trainer with it trains exactly like SubspaceTrainer."""
    from transformers import default_data_collator

    from hf_subspace import HessianOperator
    from hf_subspace.callback import SubspaceCallback
    from hf_subspace.trainer import hessian_subset_indices

    overrides = {"subspace_mode": "bulk", "subspace_start_step": 3, "subspace_alignment_steps": 2, "max_steps": 6}
    reference = _trainer(tmp_path / "sub", dataset, **overrides)
    reference.train()

    torch.manual_seed(0)
    model = DigitsMLP()
    args = SubspaceTrainingArguments(**base_args(str(tmp_path / "plain"), **overrides))
    params = [p for p in model.parameters() if p.requires_grad]
    indices = hessian_subset_indices(len(dataset), args)
    batches = [
        default_data_collator([dataset[int(i)] for i in indices[s : s + args.hessian_batch_size]])
        for s in range(0, len(indices), args.hessian_batch_size)
    ]
    logged: list[dict[str, float]] = []
    callback = SubspaceCallback(HessianOperator(model, batches, params=params), params, args, log=logged.append)
    plain = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[callback])
    checker = UpdateChecker(reference)  # reads only subspace_params / subspace_state, which the callback also has
    checker.trainer = type("View", (), {"subspace_params": params, "subspace_state": callback.state})()
    plain.add_callback(checker)
    plain.train()

    assert losses(plain.state.log_history) == pytest.approx(losses(reference.state.log_history), rel=1e-6)
    assert callback.state.switch_step == 3 and len([r for r in checker.records if r[0]]) == 3
    assert all(chi <= 1e-5 for projecting, chi, _ in checker.records if projecting)
    expected = [h for h in reference.state.log_history if "subspace/full_train_loss" in h]
    got = [h for h in logged if "subspace/full_train_loss" in h]
    assert len(got) == len(expected) == 5  # steps 0, 2, the switch at 3, 4 and the final measurement at 6
    for a, b in zip(got, expected):
        assert a["subspace/full_train_loss"] == pytest.approx(b["subspace/full_train_loss"], rel=1e-6)
        assert a["subspace/chi_k_full_grad"] == pytest.approx(b["subspace/chi_k_full_grad"], rel=1e-5)


def _tiny_bert_data() -> Any:
    from datasets import Dataset

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 30, (40, 8), generator=g)
    return Dataset.from_dict({"input_ids": ids.tolist(), "label": (ids[:, 0] % 2).tolist()})


@pytest.mark.parametrize("cache_layout", [False, True])
def test_model_card_of_a_model_loaded_from_a_local_folder_names_it(tmp_path, cache_layout):
    from huggingface_hub import ModelCard
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=30,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=8,
        max_position_embeddings=8,
        num_labels=2,
    )
    # A Hub cache snapshot folder carries the Hub id in its path; a plain folder has none.
    folder = tmp_path / ("hub/models--acme--tiny-bert/snapshots/0123abc" if cache_layout else "my-base-model")
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    model = BertForSequenceClassification.from_pretrained(str(folder))
    args = SubspaceTrainingArguments(
        **base_args(
            str(tmp_path / "out"),
            max_steps=1,
            per_device_train_batch_size=20,
            subspace_k=2,
            hessian_num_samples=20,
            hessian_batch_size=20,
            subspace_alignment_steps=0,
        )
    )
    trainer = SubspaceTrainer(model=model, args=args, train_dataset=_tiny_bert_data())
    trainer.train()
    trainer.create_model_card(model_name="tiny")
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert f"local folder `{folder.resolve()}`" in card.text and "scratch" not in card.text
    if cache_layout:
        assert card.data.base_model == "acme/tiny-bert" and "(Hub: acme/tiny-bert)" in card.text
    else:
        assert card.data.base_model is None


def test_resolve_base_model_hub_ids_and_folders(tmp_path):
    from huggingface_hub import ModelCard, ModelCardData

    from hf_subspace.modelcard import resolve_base_model

    assert resolve_base_model("google-bert/bert-base-uncased") == ("google-bert/bert-base-uncased", None)
    assert resolve_base_model(None) == (None, None)
    folder = tmp_path / "finetuned"
    folder.mkdir()
    assert resolve_base_model(str(folder)) == (None, str(folder.resolve()))
    # A folder whose own card names its Hub base model (as the cards written by SubspaceTrainer do).
    ModelCard.from_template(ModelCardData(base_model="google-bert/bert-base-uncased")).save(folder / "README.md")
    assert resolve_base_model(str(folder)) == ("google-bert/bert-base-uncased", str(folder.resolve()))


@pytest.mark.parametrize(
    ("architecture", "snippet"),
    [
        ("MLPForImageClassification", "AutoModelForImageClassification.from_pretrained"),
        ("BertForSequenceClassification", "AutoModelForSequenceClassification.from_pretrained"),
        ("DigitsMLP", None),  # a plain nn.Module cannot be loaded with an Auto class: no snippet
    ],
)
def test_model_card_loading_snippet(architecture, snippet):
    from hf_subspace.modelcard import CardInfo, render_model_card

    card = str(render_model_card({"mode": "bulk", "k": 2}, CardInfo(model_name="m", architecture=architecture)))
    if snippet is None:
        assert "from_pretrained" not in card
    else:
        assert snippet in card and "import hf_subspace" in card


def test_lanczos_refreshes_warm_start_from_the_previous_basis(tmp_path, dataset):
    """Refreshes after the first start from the previous basis with the memory-lean Lanczos too (from the sum of its
    columns): one step later the Hessian has barely moved, so a warm refresh needs far fewer products than the cold
    first one. (ARPACK builds its whole first factorisation whatever ``v0``, so ``eigsh`` gains nothing from it.)"""
    trainer = _trainer(
        tmp_path,
        dataset,
        subspace_mode="bulk",
        subspace_k=3,
        subspace_solver="lanczos",
        hessian_num_samples=250,
        subspace_start_step=0,
        subspace_refresh_steps=1,
        max_steps=3,
        logging_steps=1,
    )
    trainer.train()
    hvps = [h["subspace/solver_hvps"] for h in trainer.state.log_history if "subspace/solver_hvps" in h]
    assert len(hvps) >= 3
    # Cold starts would each cost about as much as the first. Both pay the same final check (verify_steps=5
    # products: the guarantee that no eigenvalue above lambda_k was missed), so the saving is on the sweep.
    check = 5
    assert max(hvps[1:]) - check <= 0.7 * (hvps[0] - check), hvps


def test_trace_is_logged_every_n_steps_and_matches_the_dense_hessian(tmp_path, dataset):
    trainer = _trainer(tmp_path, dataset, subspace_mode="none", subspace_trace_steps=3, max_steps=6)
    trainer.train()
    logged = {h["step"]: h for h in trainer.state.log_history if "hessian_trace" in h}
    assert sorted(logged) == [3, 6]
    assert sorted(losses(trainer.state.log_history)) == list(range(1, 7))  # the Trainer's own logs stay
    # Exact trace of the final Hessian: sum over coordinates of e_i^T H e_i (d is small).
    op = trainer.hessian_operator
    exact = float(
        sum(op.matmat(torch.eye(op.dim)[:, i : i + 100]).diagonal(offset=-i).sum() for i in range(0, op.dim, 100))
    )
    entry = logged[6]
    assert entry["hessian_trace_stderr"] > 0
    assert abs(entry["hessian_trace"] - exact) <= 4 * entry["hessian_trace_stderr"]
    with pytest.raises(ValueError, match="subspace_trace_matvecs=2 at least 4"):
        SubspaceTrainingArguments(**base_args(str(tmp_path), subspace_trace_steps=1, subspace_trace_matvecs=2))


def test_split_basis_files_reassemble_into_any_layout(tmp_path) -> None:
    """Per-process basis files (a 2-process row split, FSDP2 shards) load whole, into another row split, or into
    FSDP2 shards of another order: the rows each layout asks for (files written by hand, no processes needed)."""
    from hf_subspace._shards import LocalShards, RowShard
    from hf_subspace.trainer import load_subspace_state, save_subspace_state

    dim, gen = 11, torch.Generator().manual_seed(0)
    full, warm = torch.randn(dim, 3, generator=gen), torch.randn(dim, 4, generator=gen)
    shards = [torch.tensor([0, 1, 2, 7, 8]), torch.tensor([3, 4, 5, 6, 9, 10])]  # each rank's rows of two tensors
    layouts = {
        "rows": [RowShard(dim, 2, r) for r in (0, 1)],
        "fsdp": [LocalShards(dim, (3, 2), shards[0], 2, 0), LocalShards(dim, (4, 2), shards[1], 2, 1)],
    }
    pick = lambda layout: slice(layout.start, layout.stop) if isinstance(layout, RowShard) else layout.index  # noqa: E731
    targets = [None, RowShard(dim, 3, 1), layouts["fsdp"][1], layouts["rows"][0]]
    for saved, parts in layouts.items():
        folder = tmp_path / saved
        folder.mkdir()
        for layout in parts:
            state = {"basis": {"vectors": full[pick(layout)], "eigenvalues": torch.ones(3)}, "settings": {"dim": dim}}
            state["warm_start"] = warm[pick(layout)]
            save_subspace_state(str(folder), state, layout, main=layout.rank == 0)
        for target in targets:
            loaded = load_subspace_state(str(folder), target, torch.device("cpu"))
            rows = slice(None) if target is None else pick(target)
            assert torch.equal(loaded["basis"]["vectors"], full[rows]), (saved, target)
            assert torch.equal(loaded["warm_start"], warm[rows]), (saved, target)
