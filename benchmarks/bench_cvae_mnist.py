"""Conditional VAEs on MNIST: label-conditional samples and top → bottom structured prediction.

Both tasks use statically binarized MNIST (training draw: the seed; test draw: seed 0), a CVAE with
a learned prior p(z|x), 16-D latent, one ReLU hidden layer of 256 per network, Bernoulli decoder,
Adam lr 1e-3, batch 100, ``--epochs`` epochs; for ``halves`` a deterministic regressor (the same
256-unit network to per-pixel Bernoulli logits) is trained on the same data for as long. Test
metrics on the first ``--eval-examples`` test images, nats per example summed over the 392 (halves)
or 784 (label) predicted pixels: the CVAE's ELBO and importance-sampled log p(y|x)
(``--importance-samples`` draws from q(z|x,y)), and the regressor's exact log p(y|x). Mean ± std
over ``--seeds`` seeds; figures from the first seed.

    python benchmarks/bench_cvae_mnist.py [--epochs 10] [--seeds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from latentvi.jobs.cvae import CVAEDataConfig, train_cvae
from latentvi.models.cvae import CVAEConfig
from latentvi.train import TrainConfig
from results_io import save_results

RESULTS = Path(__file__).parent / "results"
METRICS = (
    "cvae_elbo",
    "cvae_log_likelihood",
    "regressor_log_likelihood",
    "gain",
    "train_seconds",
    "regressor_train_seconds",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-examples", type=int, default=1000)
    parser.add_argument("--importance-samples", type=int, default=200)
    parser.add_argument("--tasks", default="label,halves")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    model = CVAEConfig(latent_dim=16, hidden=(256,), likelihood="bernoulli", activation="relu")
    results = {
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{arguments.threads} thread(s)",
        "epochs": arguments.epochs,
        "model": vars(model),
        "units": "nats per test example, summed over the predicted pixels",
        "tasks": {},
    }
    scratch = Path(tempfile.mkdtemp(prefix="bench-cvae-"))
    started = time.perf_counter()
    try:
        for task in arguments.tasks.split(","):
            data = CVAEDataConfig(
                dataset="mnist",
                task=task,
                eval_examples=arguments.eval_examples,
                importance_samples=arguments.importance_samples,
            )
            runs = []
            for seed in range(arguments.seeds):
                train = TrainConfig(
                    epochs=arguments.epochs,
                    lr=1e-3,
                    seed=seed,
                    progress=False,
                    tensorboard=False,
                    log_every=600,
                    out=str(scratch / f"{task}-{seed}"),
                )
                run = train_cvae(model, data, train)
                print(task, seed, {k: run.get(k) for k in METRICS}, flush=True)
                runs.append(run)
                if seed == 0:
                    for figure in run["figures"]:
                        shutil.copy(figure, RESULTS / f"cvae-mnist-{Path(figure).name}")
            summary = {}
            for key in METRICS:
                values = [r[key] for r in runs if key in r]
                if values:
                    std = statistics.stdev(values) if len(values) > 1 else 0.0
                    summary[key] = {"mean": statistics.fmean(values), "std": std}
            results["tasks"][task] = {"summary": summary, "per_seed": runs}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    results["total_seconds"] = time.perf_counter() - started
    results["load_average_at_end"] = os.getloadavg()
    save_results(RESULTS / "cvae_mnist.json", results)


if __name__ == "__main__":
    main()
