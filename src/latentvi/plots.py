"""Figures people look at. Every function draws with matplotlib's Agg backend (no screen needed)
and writes a PNG through :func:`save_figure`, which replaces the file atomically."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = [
    "image_grid",
    "plot_frame_strip",
    "plot_image_grid",
    "plot_latent_scatter",
    "plot_learning_curves",
    "plot_prediction_errors",
    "plot_training_curves",
    "plot_trajectories",
    "plot_vi_report",
    "save_figure",
]


def save_figure(figure: plt.Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write ``figure`` to ``path`` (PNG) atomically and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".png")
    os.close(handle)
    try:
        figure.savefig(temporary, dpi=dpi, bbox_inches="tight")
        os.replace(temporary, path)
    finally:
        plt.close(figure)
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def plot_vi_report(
    histories: Mapping[str, Sequence[Mapping[str, float]]],
    reference_log_likelihood: float,
    variances: Mapping[str, float],
    path: str | os.PathLike,
) -> Path:
    """The ``latentvi vi`` figure: training curves (left) and estimator variances (right).

    ``histories`` maps a run name to its evaluation records (``step``, ``elbo``, ``log_marginal``);
    ``reference_log_likelihood`` is the closed-form maximum-likelihood value; ``variances`` maps an
    estimator name to the total variance of its gradient (trace of the covariance).
    """
    figure, (curves, bars) = plt.subplots(
        1, 2, figsize=(14, 5.5), layout="constrained", width_ratios=(1.3, 1)
    )
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for colour, (name, history) in zip(colours, histories.items(), strict=False):
        steps = [record["step"] for record in history]
        curves.plot(steps, [r["elbo"] for r in history], color=colour, label=f"{name}: ELBO")
        curves.plot(
            steps,
            [r["log_marginal"] for r in history],
            color=colour,
            linestyle=":",
            label=f"{name}: log p(x)",
        )
    curves.axhline(reference_log_likelihood, color="black", linestyle="--", label="MLE log p(x)")
    all_values = [r["elbo"] for h in histories.values() for r in h]
    if all_values:
        low = sorted(all_values)[len(all_values) // 10]
        curves.set_ylim(min(low, reference_log_likelihood - 1), reference_log_likelihood + 0.5)
    curves.set_xlabel("optimization step")
    curves.set_ylabel("nats per example")
    curves.set_title("ELBO (solid) and exact log p(x) (dotted) during training")
    curves.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.15))

    names = list(variances)
    bars.barh(names, [variances[n] for n in names], color=colours[: len(names)])
    bars.set_xscale("log")
    bars.invert_yaxis()
    bars.set_xlabel("total gradient variance (trace of covariance), log scale")
    bars.set_title("Gradient estimator variance at the same q")
    return save_figure(figure, path)


def image_grid(images: torch.Tensor, columns: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile images ``[N, C, H, W]`` (values in [0, 1]) into one array ``[rows·(H+pad), …, C]``."""
    images = images.detach().float().clamp(0, 1).cpu()
    n, channels, height, width = images.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    grid = np.ones((rows * (height + pad) + pad, columns * (width + pad) + pad, channels))
    for i in range(n):
        r, c = divmod(i, columns)
        top, left = pad + r * (height + pad), pad + c * (width + pad)
        grid[top : top + height, left : left + width] = images[i].permute(1, 2, 0).numpy()
    return grid[..., 0] if channels == 1 else grid


def plot_image_grid(
    images: torch.Tensor, path: str | os.PathLike, title: str = "", columns: int | None = None
) -> Path:
    """Save a grid of images ``[N, C, H, W]`` in [0, 1] as a PNG."""
    grid = image_grid(images, columns)
    figure, axis = plt.subplots(
        figsize=(max(3.0, grid.shape[1] / 30), max(3.0, grid.shape[0] / 30))
    )
    axis.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axis.set_axis_off()
    if title:
        axis.set_title(title)
    return save_figure(figure, path)


def plot_latent_scatter(
    points: torch.Tensor, labels: torch.Tensor, path: str | os.PathLike, title: str = ""
) -> Path:
    """Scatter of 2-D points ``[N, 2]`` coloured by integer labels ``[N]``."""
    points, labels = points.detach().cpu().numpy(), labels.detach().cpu().numpy()
    figure, axis = plt.subplots(figsize=(6, 5))
    scatter = axis.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", s=3, alpha=0.7)
    figure.colorbar(scatter, ax=axis, label="label")
    axis.set_title(title)
    return save_figure(figure, path)


def plot_training_curves(
    records: Sequence[Mapping[str, float]],
    keys: Sequence[str],
    path: str | os.PathLike,
    title: str = "",
    xlabel: str = "step",
) -> Path:
    """Plot ``keys`` of metric records (each with a ``step``) against the step, one panel."""
    figure, axis = plt.subplots(figsize=(7, 4))
    for key in keys:
        points = [(r["step"], r[key]) for r in records if key in r and r[key] is not None]
        if points:
            steps, values = zip(*points, strict=True)
            axis.plot(steps, values, label=key, marker="." if len(points) < 30 else None)
    axis.set_xlabel(xlabel)
    axis.set_ylabel("nats per example")
    axis.set_title(title)
    axis.legend()
    return save_figure(figure, path)


def plot_trajectories(
    panels: Mapping[str, Sequence],
    layout,
    path: str | os.PathLike,
    title: str = "",
    max_paths: int = 100,
) -> Path:
    """One panel per policy of 2-D paths over a task's obstacles.

    ``panels`` maps a title to episodes (each with ``positions [T+1, 2]``, ``success``,
    ``collision`` and ``mode``); ``layout`` has ``discs`` ``(cx, cy, r)``, ``boxes``
    ``(x0, y0, x1, y1)``, ``start``, ``goal``, ``goal_radius``, ``arena`` and ``mode_names``.
    Successful paths are coloured by mode, collisions red, timeouts grey.
    """
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:purple")
    count = len(panels)
    figure, axes = plt.subplots(1, count, figsize=(3.2 * count, 3.4), squeeze=False)
    for axis, (name, episodes) in zip(axes[0], panels.items(), strict=True):
        for cx, cy, r in layout.discs:
            axis.add_patch(plt.Circle((cx, cy), r, color="0.3"))
        for x0, y0, x1, y1 in layout.boxes:
            axis.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, color="0.3"))
        axis.add_patch(plt.Circle(layout.goal, layout.goal_radius, color="gold", alpha=0.6))
        for episode in list(episodes)[:max_paths]:
            if episode.collision:
                colour = "tab:red"
            elif episode.success and episode.mode >= 0:
                colour = colours[episode.mode % len(colours)]
            else:
                colour = "0.6"
            path_xy = np.asarray(episode.positions)
            axis.plot(path_xy[:, 0], path_xy[:, 1], color=colour, lw=0.7, alpha=0.6)
        extent = layout.arena
        axis.set_xlim(-extent, extent)
        axis.set_ylim(-extent, extent)
        axis.set_aspect("equal")
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_title(name, fontsize=9)
    if title:
        figure.suptitle(title, fontsize=10)
    return save_figure(figure, path)


def plot_prediction_errors(mse: np.ndarray, baseline: np.ndarray, path: str | os.PathLike) -> Path:
    """Per-step error of an open-loop prediction ``[H]`` beside a baseline's ``[H]``."""
    figure, axis = plt.subplots(figsize=(6, 3.5))
    steps = np.arange(1, len(mse) + 1)
    axis.plot(steps, mse, label="open-loop prediction")
    axis.plot(steps, baseline, linestyle="--", label="mean context frame")
    axis.set_xlabel("steps ahead (agent steps)")
    axis.set_ylabel("mean squared error (pixels in [0, 1])")
    axis.legend()
    return save_figure(figure, path)


def plot_frame_strip(
    frames: np.ndarray, path: str | os.PathLike, title: str, count: int = 16
) -> Path:
    """Every k-th frame of ``frames`` uint8 ``[T, C, H, W]`` in one row (at most ``count``)."""
    every = max(1, len(frames) // count)
    chosen = torch.as_tensor(frames[::every][:count]).float() / 255.0
    return plot_image_grid(chosen, path, f"{title}, every {every} step(s)",
                           columns=len(chosen))  # fmt: skip


def plot_learning_curves(
    curves: dict[str, list[dict]], path: str | os.PathLike, title: str = ""
) -> Path:
    """Evaluation return (mean ± std band) against environment steps, one line per name."""
    figure, axis = plt.subplots(figsize=(7, 4))
    for name, rows in curves.items():
        if not rows:
            continue
        steps = np.array([r["env_step"] for r in rows])
        mean = np.array([r["return_mean"] for r in rows])
        std = np.array([r["return_std"] for r in rows])
        axis.plot(steps, mean, label=name, marker="." if len(rows) < 30 else None)
        axis.fill_between(steps, mean - std, mean + std, alpha=0.2)
    axis.set_xlabel("environment steps")
    axis.set_ylabel("evaluation return")
    axis.set_title(title)
    axis.legend()
    return save_figure(figure, path)
