"""Read a training run's metrics: every row ``latentvi train`` logged, as Python dicts.

A run folder holds ``metrics.jsonl``, one JSON object per logged step: ``{"step": ..., "time":
..., "loss/...": ..., "eval/...": ...}``. ``latentvi.train.read_metrics`` returns those rows in
order (a line torn by a crash is skipped). Make a small run first, e.g. on scikit-learn's 8×8
digits (seconds):

    latentvi train vae --dataset digits --latent-dim 2 --hidden 32 --max-steps 200 --out runs/digits
    python examples/read_metrics.py runs/digits                  # a table of the last values
    python examples/read_metrics.py runs/digits --plot curve.png # and the training losses
"""

from __future__ import annotations

import argparse
import math
import sys

from latentvi.train import read_metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run folder written by `latentvi train`")
    parser.add_argument("--plot", metavar="PNG", help="also draw the training losses against step")
    args = parser.parse_args(argv)

    rows = read_metrics(args.run)
    if not rows:
        print(f"{args.run} has no metrics.jsonl rows: is it a run folder?", file=sys.stderr)
        return 2
    keys = sorted({key for row in rows for key in row} - {"step", "time"})
    print(f"{len(rows)} rows, steps {rows[0]['step']} to {rows[-1]['step']}")
    for key in keys:
        # The last row that has this key (evaluation keys appear less often than losses).
        step, value = next((row["step"], row[key]) for row in reversed(rows) if key in row)
        shown = f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else value
        print(f"  {key:<28} {shown!s:>12}  (step {step})")

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(6, 3.5))
        for key in (k for k in keys if "loss/" in k and not k.startswith("eval/")):
            points = [(row["step"], row[key]) for row in rows if key in row]
            axis.plot(*zip(*points, strict=True), label=key)
        axis.set(xlabel="step", ylabel="nats per example", title=f"training losses: {args.run}")
        axis.legend()
        figure.tight_layout()
        figure.savefig(args.plot, dpi=100)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
