"""Figures people look at. Every function draws with matplotlib's Agg backend (no screen needed)
and writes a PNG through :func:`save_figure`, which replaces the file atomically."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = ["plot_vi_report", "save_figure"]


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
    figure, (curves, bars) = plt.subplots(1, 2, figsize=(12, 4.5))
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
    curves.legend(fontsize=7, ncol=2)

    names = list(variances)
    bars.barh(names, [variances[n] for n in names], color=colours[: len(names)])
    bars.set_xscale("log")
    bars.invert_yaxis()
    bars.set_xlabel("total gradient variance (trace of covariance), log scale")
    bars.set_title("Gradient estimator variance at the same q")
    return save_figure(figure, path)
