"""Test log-likelihood of a VAE/IWAE run against epochs (Burda et al. 2016, Table 1 protocol).

Evaluates every checkpoint of a run folder on the first ``--curve-examples`` test images with
``--importance-samples`` draws (the curve), then the newest checkpoint on the whole test set (the
figure to compare with the paper). Test images are binarized once with a fixed seed.

    python benchmarks/bench_vae_quality.py runs/mnist-vae --name "VAE 784-200-200-50"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from latentvi.jobs.vae import evaluate_run
from latentvi.plots import plot_training_curves
from latentvi.train.checkpoint import list_checkpoints


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--name", default=None)
    parser.add_argument("--importance-samples", type=int, default=5000)
    parser.add_argument("--curve-examples", type=int, default=1000)
    parser.add_argument("--final-examples", type=int, default=None, help="default: all 10,000")
    parser.add_argument("--every", type=int, default=1, help="evaluate every N-th checkpoint")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="JSON path (default: results/quality-RUN)")
    parser.add_argument(
        "--no-final", action="store_true", help="only the curve (e.g. while the run goes on)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    config = json.loads((run / "config.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = {r["step"]: r["train/epoch"] for r in records if "train/epoch" in r}
    out = Path(args.out or f"benchmarks/results/quality-{run.name}.json")
    # Points of an earlier call with the same settings are kept, so the curve of a run that is
    # still training can be extended without evaluating its old checkpoints again.
    settings = {"importance_samples": args.importance_samples, "n_examples": args.curve_examples}
    earlier = json.loads(out.read_text()) if out.exists() else {}
    previous = earlier.get("curve", []) if earlier.get("model") == config.get("model") else []
    done = {c["step"]: c for c in previous if all(c.get(k) == v for k, v in settings.items())}
    curve = []
    checkpoints = list_checkpoints(run)
    chosen = [  # every N-th checkpoint, counted from the first (stable as the run grows), + newest
        c for i, c in enumerate(checkpoints, 1) if i % args.every == 0 or c == checkpoints[-1]
    ]
    for checkpoint in chosen:
        step = int(checkpoint.name.split("-")[1])
        if step in done:
            curve.append(done[step])
            continue
        result = evaluate_run(
            run,
            importance_samples=args.importance_samples,
            n_examples=args.curve_examples,
            progress=False,
            checkpoint=checkpoint,
        )
        epoch = epochs.get(step)
        curve.append({"step": step, "epoch": epoch, **result})
        print(f"step {step} epoch {epoch}: log p(x) {result['log_likelihood']:.2f}", flush=True)
    final = None
    if not args.no_final:
        final = evaluate_run(
            run,
            importance_samples=args.importance_samples,
            n_examples=args.final_examples,
            progress=False,
        )
    name = args.name or run.name
    results = {
        "command": "python " + " ".join(sys.argv),
        "run": str(run),
        "name": name,
        "train_config": {k: config.get(k) for k in ("epochs", "lr", "lr_schedule", "seed")},
        "model": config.get("model"),
        "curve": curve,
        "final": final,
        "units": "nats per example, test set, importance-sampled log-likelihood",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    plot_training_curves(
        [{"step": c["epoch"] or c["step"], "test log p(x)": c["log_likelihood"]} for c in curve],
        ["test log p(x)"],
        out.with_suffix(".png"),
        f"{name}: test log-likelihood (K={args.importance_samples}) against epochs",
        xlabel="epoch",
    )
    print(json.dumps(final, indent=2))
    return results


if __name__ == "__main__":
    main()
