"""Tests for hf_subspace.experiments.plotting: every function writes a readable PNG, also for degenerate inputs."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_subspace.experiments import plotting, trajectory_figure

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


def test_summary_figure_shows_the_prefix_chi_ema() -> None:
    """The χ_k panel draws the prefix's χ_k EMA (what the paper's switch rule watches) up to the switch."""
    summary = _summary()
    ema = [[s, 1 - 0.9 ** (s / 10 + 1)] for s in range(0, 201, 10)]
    summary["runs"]["sgd"]["curves"] = {"chi_k_full_grad_ema": ema}
    summary["switch_rule"] = {"rule": "ema", "threshold": 0.95}
    lines = {line.get_label(): line for line in plotting.summary_figure(summary).axes[1].get_lines()}
    line = lines["χ_k EMA of the prefix (switch rule)"]
    assert list(line.get_xdata()) == list(range(0, 101, 10))  # the prefix only
    assert np.allclose(line.get_ydata(), [v for s, v in ema if s <= 100])
    assert not any(
        "EMA" in label for label in plotting.summary_figure(_summary()).axes[1].get_legend_handles_labels()[1]
    )


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
    _check_png(trajectory_figure.plot_trajectory_2d(loss_fn, trajectories, tmp_path / "traj.png", (-0.5, 2.5), (-1, 1)))
    # constant loss: no contours, still a figure
    _check_png(
        trajectory_figure.plot_trajectory_2d(
            lambda x, y: np.zeros_like(x), {}, tmp_path / "flat.png", (0, 1), (0, 1), title="flat"
        )
    )


# ----------------------------------------------------------------------------------------------- what the figures show


def _four_branches() -> dict:
    steps = list(range(0, 201, 10))
    runs = {}
    for mode, sub, full, rate in (
        ("sgd", "none", False, 0.02), ("gd", "none", True, 0.02), ("dominant", "dominant", False, 0.0),
        ("bulk", "bulk", False, 0.02),
    ):  # fmt: skip
        loss = [2.0 * np.exp(-0.01 * s) if s <= 100 else 2.0 * np.exp(-1.0 - rate * (s - 100)) for s in steps]
        chi = [0.9 if s <= 100 or mode != "gd" else 0.0 for s in steps]
        runs[mode] = {
            "loss_curve": [[s, v] for s, v in zip(steps, loss)],
            "chi_k_curve": [[s, c] for s, c in zip(steps, chi)],
            "subspace_mode": sub,
            "full_batch": full,
        }
    return {"recipe": "mlp_mnist", "name": "mlp_digits", "dataset": "digits", "k": 10, "switch_step": 100, "runs": runs}


def test_summary_figure_keeps_every_branch_visible():
    figure = plotting.summary_figure(_four_branches())
    ax_loss, ax_chi = figure.axes[:2]
    assert figure.get_suptitle().startswith("mlp_digits")
    for ax in (ax_loss, ax_chi):
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert {"sgd", "gd", "dominant", "bulk", "shared SGD prefix"} <= set(lines)
        prefix = lines["shared SGD prefix"]
        assert prefix.get_xdata().max() == 100 and prefix.get_color() == plotting.PREFIX_COLOR  # drawn once
        curves = [line for line in ax.get_lines() if not line.get_label().startswith("switch")]
        assert sum(1 for line in curves if np.min(line.get_xdata()) < 100) == 1
        branches = [lines[m] for m in ("sgd", "gd", "dominant", "bulk")]
        assert all(np.min(line.get_xdata()) == 100 for line in branches)  # from the switch on
        styles = {(line.get_linestyle(), line.get_marker()) for line in branches}
        assert len(styles) == 4  # SGD stays visible under Bulk-SGD: no two branches share line style and marker
        assert len({line.get_color() for line in branches} | {prefix.get_color()}) == 5
    assert ax_loss.get_yscale() == "log" and ax_loss.get_xlabel() == "step"


def test_unprojected_branch_named_after_its_optimizer_is_drawn_like_sgd():
    summary = _four_branches()
    summary["runs"] = {("adamw" if k == "sgd" else k): v for k, v in summary["runs"].items()}
    lines = {line.get_label(): line for line in plotting.summary_figure(summary).axes[0].get_lines()}
    assert lines["adamw"].get_color() == "black" and lines["adamw"].get_marker() == "o"


def test_spectrum_figure_has_integer_index_ticks():
    figure = plotting.spectrum_figure([40.0, 12.0, 5.0, 0.2, 0.1, 0.05, 0.01], k=3, title="spectrum")
    (ax,) = figure.axes
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert "index" in ax.get_xlabel() and ax.get_title() == "spectrum"


def test_toy_trajectory_figure_is_readable():
    t = np.arange(0, 60)
    sgd = np.stack([t, 0.003 * (-1.0) ** t, 1.0 - 0.005 * t], axis=1)  # bounces across the valley every step
    gd = np.stack([t, 0.0 * t, 1.0 - 0.005 * t], axis=1)
    figure = trajectory_figure.trajectory_figure(
        lambda x, y: 0.5 * (1000 * x**2 + y**2), {"sgd": sgd, "gd": gd}, (-0.01, 0.01), (0.6, 1.05),
        title="toy", xlabel="θ₁ (sharp)", ylabel="θ₂ (flat)",
    )  # fmt: skip
    contour_ax = figure.axes[0]
    assert contour_ax.get_xlabel() == "θ₁ (sharp)" and contour_ax.get_ylabel() == "θ₂ (flat)"
    assert any("not to scale" in text.get_text() for text in contour_ax.texts)  # the 40:1 stretch is stated
    sgd_path = [
        line for line in contour_ax.get_lines() if line.get_xdata().size == t.size and line.get_color() == "black"
    ]
    assert sgd_path and sgd_path[0].get_linestyle() == "None"  # dots, not a solid wedge of zigzags
    markers = [line for line in contour_ax.get_lines() if line.get_marker() in ("o", "*")]
    assert markers and all(not line.get_clip_on() for line in markers)  # start/end markers never clipped
    assert len(figure.axes) == 3 and figure.axes[2].get_xlabel() == "step"  # coordinates over the steps


def test_bouncing_path_gets_an_inset_of_its_first_steps_connected():
    """At full length a path that bounces across the valley shows only its two envelopes (a V); the inset draws
    its first steps connected, every step, so the zig-zag is visible. A path along the floor gets none."""
    t = np.arange(0, 200)
    sgd = np.stack([t, 0.003 * (-1.0) ** t * (1 - t / 400), 1.0 - 0.002 * t], axis=1)
    gd = np.stack([t, 1e-12 * (-1.0) ** t, 1.0 - 0.002 * t], axis=1)  # rounding noise is no bounce
    figure = trajectory_figure.trajectory_figure(lambda x, y: 0.5 * (1000 * x**2 + y**2), {"sgd": sgd, "gd": gd},
                                        (-0.01, 0.01), (0.5, 1.05))  # fmt: skip
    (inset,) = figure.axes[0].child_axes
    paths = [line for line in inset.get_lines() if line.get_linestyle() == "-"]
    assert len(paths) == 1 and paths[0].get_color() == "black"
    assert np.allclose(paths[0].get_xdata(), sgd[:13, 1]) and np.allclose(paths[0].get_ydata(), sgd[:13, 2])
    alone = trajectory_figure.trajectory_figure(lambda x, y: x * 0 + y, {"gd": gd}, (-0.01, 0.01), (0.5, 1.05))
    assert not alone.axes[0].child_axes


def test_loss_axis_labels_are_plain_numbers_within_a_decade():
    summary = _summary()
    for run in summary["runs"].values():
        run["loss_curve"] = [[s, 2.3 - 0.0005 * s] for s, _ in run["loss_curve"]]  # 2.3 → 1.8: under a decade
    ax = plotting.summary_figure(summary).axes[0]
    ax.figure.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels(minor=True) + ax.get_yticklabels() if t.get_text()]
    assert labels and all("10^" not in text and "\\times" not in text for text in labels)
    assert all(float(text) > 0 for text in labels)
