"""After ``import hf_subspace`` (and nothing else of it), the transformers Auto classes load saved project models.

Each check runs in a fresh interpreter: in this test process the models are registered already.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_subspace.models import MLPConfig, MLPForImageClassification, SST2TransformerConfig
from hf_subspace.models import SST2TransformerForSequenceClassification as SST2Model


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("auto")
    torch.manual_seed(0)
    # two labels: the count transformers leaves out of config.json (its own default), ours defaults to 10
    MLPForImageClassification(MLPConfig(input_size=6, hidden_sizes=[4], num_labels=2)).save_pretrained(root / "mlp")
    config = SST2TransformerConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=16, max_position_embeddings=12)  # fmt: skip
    SST2Model(config).save_pretrained(root / "sst2")
    return root


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("hf_subspace_first", [True, False])
def test_auto_classes_load_saved_models_after_import_hf_subspace(saved: Path, hf_subspace_first: bool) -> None:
    load = (
        "from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification\n"
        f"mlp = AutoModelForImageClassification.from_pretrained({str(saved / 'mlp')!r})\n"
        f"sst2 = AutoModelForSequenceClassification.from_pretrained({str(saved / 'sst2')!r})\n"
        "w = float(mlp.classifier.weight.sum())\n"
        "print(type(mlp).__name__, mlp.config.num_labels, type(sst2).__name__, repr(w))\n"
    )
    code = f"import hf_subspace\n{load}" if hf_subspace_first else f"{load.splitlines()[0]}\nimport hf_subspace\n{load}"
    names = _run(code).split()
    expected = MLPForImageClassification.from_pretrained(saved / "mlp").classifier.weight.sum().item()
    assert names[:3] == ["MLPForImageClassification", "2", "SST2TransformerForSequenceClassification"]
    assert float(names[3]) == pytest.approx(float(expected), abs=0.0)


def test_without_hf_subspace_transformers_does_not_know_the_model(saved: Path) -> None:
    code = (
        "from transformers import AutoModelForImageClassification\n"
        "try:\n"
        f"    AutoModelForImageClassification.from_pretrained({str(saved / 'mlp')!r})\n"
        "    print('loaded')\n"
        "except (ValueError, KeyError):\n"
        "    print('unknown')\n"
    )
    assert _run(code) == "unknown"
