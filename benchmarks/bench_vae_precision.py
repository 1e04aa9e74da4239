"""Does training with bfloat16 inside the matmuls (``TrainConfig.matmul_precision``) change the
model it learns? The speed benchmark's VAE (784-200-200-50 tanh, Bernoulli decoder, batch 100,
AdamW lr 1e-3, dynamically binarized MNIST) trained for ``--epochs`` with float32 and with
bfloat16 matmul precision, for each of ``--seeds``, then evaluated in float32 on the test set
(binarized once, seed 0): the ELBO on all 10,000 images (1 sample, fixed seed) and the IWAE-k
bound on the first ``--iwae-examples``. The float32/bfloat16 gap is to be read against the gap
between seeds.

    python benchmarks/bench_vae_precision.py [--epochs 5] [--seeds 0 1] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from latentvi.data import Batches, load_dataset
from latentvi.data.binarize import binarize_static
from latentvi.models.vae import VAE, VAEConfig
from latentvi.train import TrainConfig, fit
from results_io import save_results


def train(images: torch.Tensor, seed: int, epochs: int, precision: str) -> tuple[VAE, float]:
    """A fresh VAE trained by ``fit``; also the training seconds."""
    torch.manual_seed(seed)
    model = VAE((1, 28, 28), VAEConfig(latent_dim=50, hidden=(200, 200)))
    batches = Batches(images, batch_size=100, binarize="dynamic")
    config = TrainConfig(
        epochs=epochs, seed=seed, progress=False, tensorboard=False, matmul_precision=precision
    )
    started = time.perf_counter()
    fit(
        model,
        batches.make_batches,
        batches.num_batches,
        config,
    )
    return model, time.perf_counter() - started


@torch.no_grad()
def evaluate(model: VAE, test: torch.Tensor, iwae_examples: int, k: int) -> dict[str, float]:
    """Test ELBO (all images) and IWAE-k (the first ``iwae_examples``), nats per image, float32."""
    model.eval()
    torch.manual_seed(123)
    elbo = torch.cat([model.elbo(chunk) for chunk in test.split(1000)]).mean()
    iwae = torch.cat([model.iwae(chunk, k) for chunk in test[:iwae_examples].split(100)]).mean()
    return {"test_elbo": float(elbo), f"test_iwae_k{k}": float(iwae)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--iwae-examples", type=int, default=1000)
    parser.add_argument("--iwae-samples", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/vae_precision.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_at_start = list(os.getloadavg())
    images = load_dataset("mnist", "train").images
    test = binarize_static(load_dataset("mnist", "test").images, 0)
    runs = []
    for seed in args.seeds:
        for precision in ("float32", "bfloat16"):
            model, seconds = train(images, seed, args.epochs, precision)
            row = {"seed": seed, "matmul_precision": precision, "train_seconds": seconds}
            row.update(evaluate(model, test, args.iwae_examples, args.iwae_samples))
            print(row, file=sys.stderr)
            runs.append(row)
    results = {
        "command": "python " + " ".join(sys.argv),
        "epochs": args.epochs,
        "machine": {
            "cores": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
            "bf16_matmul_supported": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
            "load_average_at_start": load_at_start,
            "load_average_at_end": list(os.getloadavg()),
        },
        "runs": runs,
    }
    return save_results(args.out, results)


if __name__ == "__main__":
    main()
