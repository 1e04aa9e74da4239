"""Figures people look at. Every function draws on its own :class:`matplotlib.figure.Figure`
(not through pyplot, so no screen is needed and importing this module leaves the process's
matplotlib backend alone: inline plots in a notebook keep working) and writes a PNG through
:func:`save_figure`, which replaces the file atomically."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle, Rectangle

__all__ = [
    "image_grid",
    "plot_e2c",
    "plot_em_comparison",
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


def _subplots(nrows: int = 1, ncols: int = 1, *, figsize, layout=None, **keywords):
    """``pyplot.subplots`` without pyplot: a new Figure (no backend) and its axes."""
    figure = Figure(figsize=figsize, layout=layout)
    return figure, figure.subplots(nrows, ncols, **keywords)


def save_figure(figure: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write ``figure`` to ``path`` (PNG) atomically and close it. The file follows the umask
    like any other (``mkstemp`` would leave it 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".png")
    os.close(handle)
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(temporary, 0o666 & ~mask)
        figure.savefig(temporary, dpi=dpi, bbox_inches="tight")
        os.replace(temporary, path)
    finally:
        figure.clear()
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
    figure, (curves, bars) = _subplots(
        1, 2, figsize=(14, 5.5), layout="constrained", width_ratios=(1.3, 1)
    )
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
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


def plot_em_comparison(
    parts: Mapping[str, Mapping], tolerance: float, path: str | os.PathLike
) -> Path:
    """The ``latentvi em`` figure: the gap to the reference log p(x) against passes (left) and
    against wall time (right), one row per model, log scale.

    ``parts`` maps a model name (``"ppca"``, ``"mixture"``) to a dict with
    ``reference_log_likelihood``, ``reference`` (what it is) and ``fits``: method name -> a dict
    with ``history`` (records with ``iteration``, ``seconds``, ``log_marginal``). Gaps below 1e-7
    nats are drawn at 1e-7; a method above the reference (another local maximum) is drawn there too.
    """
    floor = 1e-7
    rows = len(parts)
    figure, axes = _subplots(rows, 2, figsize=(13, 4.6 * rows), layout="constrained", squeeze=False)
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    titles = {"ppca": "probabilistic PCA", "mixture": "Gaussian mixture"}
    for row, (name, part) in zip(axes, parts.items(), strict=True):
        reference = part["reference_log_likelihood"]
        for colour, (method, fit) in zip(colours, part["fits"].items(), strict=False):
            history = fit["history"]
            gaps = [max(reference - r["log_marginal"], floor) for r in history]
            style = "--" if method == "hard EM" else "-"
            for axis, key in zip(row, ("iteration", "seconds"), strict=True):
                axis.plot([r[key] for r in history], gaps, style, color=colour, label=method)
        for axis, label in zip(
            row, ("passes over the data", "wall time of the fitting steps (s)"), strict=True
        ):
            axis.axhline(
                tolerance, color="black", linestyle=":", linewidth=1, label=f"{tolerance} nats"
            )
            axis.set_yscale("log")
            axis.set_xlabel(label)
            axis.set_ylabel("reference log p(x) − log p(x)  (nats per example)")
            axis.set_title(
                f"{titles.get(name, name)}: gap to {part['reference'].split(' (')[0]}", fontsize=9
            )
        row[1].set_xscale("symlog", linthresh=1e-3)
        row[1].set_xlim(left=0)
        row[0].legend(fontsize=8)
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
    images: torch.Tensor,
    path: str | os.PathLike,
    title: str = "",
    columns: int | None = None,
    row_labels: Sequence[str] | None = None,
) -> Path:
    """Save a grid of images ``[N, C, H, W]`` in [0, 1] as a PNG; ``row_labels`` name the rows
    (one label per row of the grid, written left of it)."""
    grid = image_grid(images, columns)
    figure, axis = _subplots(figsize=(max(3.0, grid.shape[1] / 30), max(3.0, grid.shape[0] / 30)))
    axis.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    if row_labels:
        height = (grid.shape[0] - 1) / len(row_labels)  # rows of images, padding included
        axis.set_yticks([1 + height * (i + 0.5) for i in range(len(row_labels))])
        axis.set_yticklabels(row_labels, fontsize=8)
        axis.set_xticks([])
        axis.tick_params(length=0)
        for spine in axis.spines.values():
            spine.set_visible(False)
    else:
        axis.set_axis_off()
    if title:
        axis.set_title(title)
    return save_figure(figure, path)


def plot_latent_scatter(
    points: torch.Tensor, labels: torch.Tensor, path: str | os.PathLike, title: str = ""
) -> Path:
    """Scatter of 2-D points ``[N, 2]`` coloured by integer labels ``[N]``."""
    points, labels = points.detach().cpu().numpy(), labels.detach().cpu().numpy()
    figure, axis = _subplots(figsize=(6, 5))
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
    figure, axis = _subplots(figsize=(7, 4))
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
    figure, axes = _subplots(1, count, figsize=(3.2 * count, 3.4), squeeze=False)
    for axis, (name, episodes) in zip(axes[0], panels.items(), strict=True):
        for cx, cy, r in layout.discs:
            axis.add_patch(Circle((cx, cy), r, color="0.3"))
        for x0, y0, x1, y1 in layout.boxes:
            axis.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, color="0.3"))
        axis.add_patch(Circle(layout.goal, layout.goal_radius, color="gold", alpha=0.6))
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
    names = list(getattr(layout, "mode_names", ()))
    legend = [
        Line2D([], [], color=colours[i % len(colours)], label=f"mode: {mode}")
        for i, mode in enumerate(names)
    ]
    legend += [
        Line2D([], [], color="tab:red", label="collision"),
        Line2D([], [], color="0.6", label="timeout"),
    ]
    figure.legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=8, frameon=False)
    figure.subplots_adjust(bottom=0.14)
    if title:
        figure.suptitle(title, fontsize=10)
    return save_figure(figure, path)


def plot_prediction_errors(
    mse: np.ndarray,
    baseline: np.ndarray,
    path: str | os.PathLike,
    title: str = "open-loop prediction error against steps ahead",
) -> Path:
    """Per-step error of an open-loop prediction ``[H]`` beside a baseline's ``[H]``."""
    figure, axis = _subplots(figsize=(6, 3.5))
    axis.set_title(title)
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


def plot_e2c(
    model, data: Mapping[str, torch.Tensor], result: Mapping, out: str | os.PathLike
) -> list[Path]:
    """An E2C run's figures in ``out``: ``reconstructions.png`` (x_t, its reconstruction, x_{t+1}
    and the model's prediction of it), ``latent.png`` (latent means coloured by the angle) and
    ``control.png`` (trial 0 of a control ``result``), from transitions ``data`` (``x``, ``u``,
    ``x_next``, ``theta``) and an :class:`~latentvi.models.e2c.E2C` ``model``."""
    out = Path(out)
    with torch.no_grad():
        x, u, x_next = data["x"][:8], data["u"][:8], data["x_next"][:8]
        if x_next.dim() == 5:  # K-step data: its first step
            u, x_next = u[:, 0], x_next[:, 0]
        q = model.encode(x)
        reconstruction = model.decode(q.mean).mean
        prediction = model.decode(model.step(q.mean, u)).mean
        rows = torch.cat([x[:, 1:], reconstruction[:, 1:], x_next[:, 1:], prediction[:, 1:]])
        paths = [
            plot_image_grid(
                rows,
                out / "reconstructions.png",
                "rows: x_t, reconstruction, x_{t+1}, prediction (newest frame)",
                columns=8,
            )
        ]
        means = model.encode(data["x"][:3000]).mean.numpy()
    theta = data["theta"][:3000].numpy()
    figure, axis = _subplots(figsize=(6, 5))
    if means.shape[1] >= 3:
        figure.delaxes(axis)
        axis = figure.add_subplot(projection="3d")
        points = axis.scatter(means[:, 0], means[:, 1], means[:, 2], c=theta, cmap="twilight", s=3)
    else:
        second = means[:, 1] if means.shape[1] > 1 else np.zeros(len(means))
        points = axis.scatter(means[:, 0], second, c=theta, cmap="twilight", s=3)
    figure.colorbar(points, ax=axis, label="angle θ (rad, 0 upright)")
    axis.set_title("E2C latent means on pixel pendulum")
    paths.append(save_figure(figure, out / "latent.png"))
    strip = result["strip"]
    every = max(1, math.ceil(len(strip) / 20))
    frames = torch.from_numpy(strip[::every]).float() / 255.0
    paths.append(
        plot_image_grid(
            1 - frames,
            out / "control.png",
            f"trial 0, every {every} agent steps (success: {bool(result['success'][0])})",
            columns=len(frames),
        )
    )
    return paths


def plot_learning_curves(
    curves: dict[str, list[dict]], path: str | os.PathLike, title: str = ""
) -> Path:
    """Evaluation return (mean ± std band) against environment steps, one line per name."""
    figure, axis = _subplots(figsize=(7, 4))
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
