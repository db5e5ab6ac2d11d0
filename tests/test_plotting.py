"""Tests for hf_subspace.experiments.plotting: every function writes a readable PNG, also for degenerate inputs."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_subspace.experiments import plotting

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_png(path: Path, min_width: int = 300) -> np.ndarray:
    from matplotlib.image import imread

    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = imread(path)
    assert image.ndim == 3 and image.shape[1] >= min_width and image.shape[0] >= 200
    assert image[..., :3].std() > 0  # not a blank canvas
    return image


def _summary() -> dict:
    steps = np.arange(0, 201, 10)
    runs = {}
    for mode, rate in (("sgd", 0.02), ("dominant", 0.0), ("bulk", 0.025), ("adam", 0.01)):
        loss = [2.0 * np.exp(-0.01 * s) if s <= 100 else 2.0 * np.exp(-1.0 - rate * (s - 100)) for s in steps]
        chi = [0.9 if mode != "bulk" or s <= 100 else 0.05 for s in steps]
        runs[mode] = {
            "loss_at_switch": float(loss[10]),
            "final_loss": float(loss[-1]),
            "loss_curve": [[int(s), float(v)] for s, v in zip(steps, loss)],
            "chi_k_curve": [[int(s), float(c)] for s, c in zip(steps, chi)],
        }
    return {"recipe": "mlp-cifar5k", "k": 10, "switch_step": 100, "runs": runs}


def test_plot_summary_writes_two_panel_png(tmp_path: Path) -> None:
    out = plotting.plot_summary(_summary(), tmp_path / "sub" / "summary.png")
    assert out == tmp_path / "sub" / "summary.png"
    image = _check_png(out, min_width=1000)
    assert image.shape[1] > image.shape[0]  # two panels side by side


def test_plot_summary_edge_cases(tmp_path: Path) -> None:
    summary = _summary()
    summary["runs"]["dominant"]["loss_curve"][-3:] = [[180, 0.0], [190, -1.0], [200, float("nan")]]
    del summary["runs"]["bulk"]["chi_k_curve"]
    summary["runs"]["adam"]["loss_curve"] = []
    summary["runs"]["one-point"] = {"loss_curve": [[5, 1.0]], "chi_k_curve": [[5, 0.5]]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no log-scale / empty-data warnings
        _check_png(plotting.plot_summary(summary, tmp_path / "edge.png"))
        _check_png(plotting.plot_summary({"recipe": "empty", "k": 3, "switch_step": 0, "runs": {}}, tmp_path / "e.png"))
        _check_png(plotting.plot_summary({"runs": {"sgd": {"loss_curve": [[0, 0.0], [1, 0.0]]}}}, tmp_path / "z.png"))
        _check_png(plotting.plot_summary({"runs": {"sgd": None, "bulk": {"chi_k_curve": None}}}, tmp_path / "n.png"))


def test_plot_summary_keeps_pyplot_unimported_and_backend(tmp_path: Path) -> None:
    import matplotlib

    pyplot_before = "matplotlib.pyplot" in sys.modules
    backend = matplotlib.rcParams._get_backend_or_none()  # None: not resolved yet
    plotting.plot_summary(_summary(), tmp_path / "s.png")
    assert ("matplotlib.pyplot" in sys.modules) == pyplot_before
    assert matplotlib.rcParams._get_backend_or_none() == backend


def test_prefix_legend_names_the_prefix_optimizer() -> None:
    # The prefix runs the experiment's optimizer (summary["optimizer_label"], or optimizer/optim_args/sam_rho in
    # older summaries), on the full batch with prefix_optimizer="gd".
    cases = [
        ({}, "SGD"),
        ({"prefix_optimizer": "gd"}, "GD"),
        ({"optimizer_label": "adamw"}, "AdamW"),
        ({"optimizer_label": "momentum"}, "momentum"),
        ({"optimizer_label": "sam-sgd"}, "SAM-SGD"),
        ({"optimizer_label": "adamw", "prefix_optimizer": "gd"}, "full-batch AdamW"),
        ({"optimizer": "sgd", "optim_args": "momentum=0.9"}, "momentum"),
        ({"optimizer": "adam", "sam_rho": 0.05}, "SAM-Adam"),
    ]
    for extra, expected in cases:
        assert plotting.prefix_label(extra) == expected, extra
    figure = plotting.summary_figure({**_summary(), "optimizer_label": "adamw"})
    labels = figure.axes[0].get_legend_handles_labels()[1]
    assert "shared AdamW prefix" in labels and not any("SGD prefix" in label for label in labels)
    assert "AdamW prefix" in figure.get_suptitle()


def test_branch_colors_are_consistent() -> None:
    modes = ["sgd", "dominant", "bulk", "foo", "bar", "gd"]
    assert plotting.branch_color("sgd", modes) == "black"
    assert plotting.branch_color("gd", modes) == "tab:green"  # grey is the shared prefix's
    assert plotting.branch_color("dominant", modes) == plotting.branch_color("Dom-SGD") == "tab:red"
    assert plotting.branch_color("bulk_sgd") == "tab:blue"
    assert plotting.branch_color("foo", modes) != plotting.branch_color("bar", modes)


@pytest.mark.parametrize("k", [None, 3, 0, 100])
def test_plot_spectrum(tmp_path: Path, k: int | None) -> None:
    eig = torch.tensor([0.01, 5.0, 40.0, 12.0, 0.2, -0.3, 0.05, 0.1])
    _check_png(plotting.plot_spectrum(eig, tmp_path / "spec.png", k=k, title="spectrum"))


def test_plot_spectrum_empty(tmp_path: Path) -> None:
    _check_png(plotting.plot_spectrum([], tmp_path / "empty.png", k=2))


def test_plot_eigenvalue_curves(tmp_path: Path) -> None:
    steps = np.arange(50)
    eig = np.stack([20 * (1 - np.exp(-steps / (10 + i))) for i in range(4)], axis=1)
    _check_png(plotting.plot_eigenvalue_curves(steps, eig, tmp_path / "eig.png", stability_threshold=20.0))
    _check_png(plotting.plot_eigenvalue_curves(torch.arange(5), torch.ones(5), tmp_path / "eig1.png"))
    _check_png(plotting.plot_eigenvalue_curves([], np.empty((0, 3)), tmp_path / "eig0.png"))
    with pytest.raises(ValueError, match="steps"):
        plotting.plot_eigenvalue_curves(np.arange(3), np.ones((4, 2)), tmp_path / "bad.png")


def test_plot_trajectory_2d(tmp_path: Path) -> None:
    def loss_fn(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return 0.5 * (100.0 * y**2 + x**2)

    t = np.arange(40)
    trajectories = {
        "sgd": np.stack([2.0 * 0.95**t, 0.5 * (-0.9) ** t], axis=1),
        "dominant": np.stack([np.full(40, 2.0), 0.5 * (-0.9) ** t], axis=1),
        "bulk": np.stack([2.0 * 0.95**t, np.full(40, 0.5)], axis=1),
        "empty": np.empty((0, 2)),
    }
    _check_png(plotting.plot_trajectory_2d(loss_fn, trajectories, tmp_path / "traj.png", (-0.5, 2.5), (-1, 1)))
    # constant loss: no contours, still a figure
    _check_png(
        plotting.plot_trajectory_2d(
            lambda x, y: np.zeros_like(x), {}, tmp_path / "flat.png", (0, 1), (0, 1), title="flat"
        )
    )
