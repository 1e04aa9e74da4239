"""``bench_world_model.py diagnose --run RUN``: what drives a Dreamer run's behaviour, over
environment steps, in one figure (issue 23's diagnosis).

From the run's ``metrics.jsonl`` (the scalars Dreamer logs each update, averaged per log row):

1. the λ-returns of the imagined rollouts (mean, and the 5th–95th percentile band) beside the
   critic's mean value, with the evaluation return on a second axis;
2. the actor's entropy (a sample estimate of the tanh-Gaussian's);
3. the share of imagined action components at the bounds (``|a| > 0.99``);
4. the spread of the λ-returns (95th − 5th percentile) and, for runs with return normalization,
   the normalizer's scale ``max(1, S)``.

A collapse to a constant torque shows as the entropy falling and saturation rising; an exploding
or drifting critic as the critic value leaving the λ-return band. The figure goes to
``--figure`` (default ``results/world_model_diagnose_<run>.png``); the series come back as the
result's JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure

from latentvi.plots import save_figure

KEYS = (
    "train/critic_value",
    "train/lambda_return",
    "train/lambda_return_p05",
    "train/lambda_return_p95",
    "train/actor_entropy",
    "train/action_saturation",
    "train/return_scale",
)


def series(run: Path) -> dict[str, list]:
    """``{"step": [...], key: [...]}`` for every row with Dreamer's behaviour scalars (a key the
    run does not log, e.g. the scale without return normalization, gets None), and the
    evaluations as ``eval_step`` / ``eval_return``."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    train = [r for r in rows if "train/lambda_return" in r]
    if not train:
        raise SystemExit(
            f"{run} has no Dreamer behaviour metrics (train/lambda_return): diagnose reads the "
            "metrics.jsonl of a Dreamer run"
        )
    out: dict[str, list] = {"step": [r["step"] for r in train]}
    for key in KEYS:
        out[key] = [r.get(key) for r in train]
    evaluations = [r for r in rows if "eval/return_mean" in r]
    out["eval_step"] = [r["step"] for r in evaluations]
    out["eval_return"] = [r["eval/return_mean"] for r in evaluations]
    return out


def plot(data: dict[str, list], title: str, path: Path) -> Path:
    figure = Figure(figsize=(11, 7), layout="constrained")
    axes = figure.subplots(2, 2, sharex=True)
    steps = data["step"]

    def known(key):
        pairs = [(s, v) for s, v in zip(steps, data[key], strict=True) if v is not None]
        return [s for s, _ in pairs], [v for _, v in pairs]

    ax = axes[0, 0]
    x, low = known("train/lambda_return_p05")
    _, high = known("train/lambda_return_p95")
    if x:
        ax.fill_between(x, low, high, alpha=0.25, label="λ-return 5th–95th pct")
    ax.plot(*known("train/lambda_return"), label="λ-return mean")
    ax.plot(*known("train/critic_value"), label="critic value mean")
    ax.set_ylabel("imagined return / value")
    ax.legend(loc="upper left", fontsize=8)
    if data["eval_step"]:
        twin = ax.twinx()
        twin.plot(data["eval_step"], data["eval_return"], "k--", marker=".", label="eval return")
        twin.set_ylabel("evaluation return")
        twin.legend(loc="lower right", fontsize=8)
    axes[0, 1].plot(*known("train/actor_entropy"))
    axes[0, 1].set_ylabel("actor entropy (nats)")
    axes[1, 0].plot(*known("train/action_saturation"))
    axes[1, 0].set_ylabel("share of |a| > 0.99")
    axes[1, 0].set_ylim(-0.02, 1.02)
    ax = axes[1, 1]
    spread = [h - lo for lo, h in zip(low, high, strict=True)]
    ax.plot(x, spread, label="λ-return 95th − 5th pct")
    scale_x, scale = known("train/return_scale")
    if scale_x:
        ax.plot(scale_x, scale, label="normalizer scale max(1, S)")
    ax.set_ylabel("return spread / scale")
    ax.legend(loc="upper left", fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel("environment steps")
    figure.suptitle(title)
    return save_figure(figure, path)


def diagnose(run: str | Path, figure: str | Path) -> dict:
    run = Path(run)
    data = series(run)
    config = json.loads((run / "config.json").read_text())
    title = f"{run.name}: {config.get('agent', '?')}"
    path = plot(data, title, Path(figure))
    return {"mode": "diagnose", "run": str(run), "figure": str(path), "series": data}
