"""Batch-20 VAE training step (issue 22): latentvi against an idiomatic loop and Pyro, one run.

Burda et al.'s 784-200-200-50 tanh VAE, Bernoulli decoder, ELBO with analytic KL (k = 1: the VAE
row of their Table 1), batch 20 (their batch), Adam lr 1e-3, dynamically binarized MNIST. Each
contender trains on the same ``--examples`` images per repeat; one warm-up, then ``--repeats``
interleaved rounds; medians of milliseconds per step (wall and process CPU). Contenders:

* latentvi through ``latentvi.train.fit`` with every per-step check (what ``latentvi train vae``
  runs): the autograd-free step (``VAE.loss_and_gradients`` + the fused Adam kernel called
  directly);
* the same loop through autograd (the fused ``autograd.Function`` and ``Optimizer.step``: what
  ``fit`` ran before issue 22; the same numbers, bit for bit);
* the idiomatic PyTorch loop, with ``Adam`` and with ``Adam(fused=True)``
  (``bench_vae_speed.py``'s implementations, reused);
* Pyro SVI (TraceMeanField_ELBO, same networks).

Also, in the same process: the machine's float32 matmul rate (2048² products, the same threads),
the FLOP rate of each step as a fraction of it, and the **matmul floor** of this step: the time
of just its 17 products (forward, weight and input gradients) at these shapes, back to back.

    python benchmarks/bench_vae_speed_b20.py [--examples 4000] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

from bench_vae_speed import (
    HIDDEN,
    LATENT,
    PIXELS,
    flops_per_step,
    idiomatic_epoch,
    matmul_rate,
    pyro_epoch,
    race,
)
from latentvi.data import Batches, load_dataset
from latentvi.models.vae import VAE, VAEConfig
from latentvi.train import TrainConfig, fit
from results_io import save_results

LATENTVI = "latentvi (fit, autograd-free step)"


def latentvi_epoch(images: torch.Tensor, batch_size: int, seed: int, autograd: bool = False):
    """One epoch through ``fit`` (default optimizer: fused AdamW, no weight decay = Adam).
    ``autograd=True`` switches the autograd-free step off (``loss.backward()`` + ``step()``)."""
    torch.manual_seed(seed)
    model = VAE((1, 28, 28), VAEConfig(latent_dim=LATENT, hidden=(HIDDEN, HIDDEN)))
    if autograd:
        model.loss_and_gradients = lambda batch: None
    batches = Batches(images, batch_size=batch_size, binarize="dynamic")
    config = TrainConfig(epochs=1, progress=False, tensorboard=False, log_every=10**9, seed=seed)

    def run() -> None:
        fit(model, batches.make_batches, batches.num_batches, config)

    return run


def matmul_floor(batch_size: int, repeats: int = 300) -> float:
    """Seconds of the step's matmuls alone: for each layer (in, out) of the encoder
    (784-200-200-100) and decoder (50-200-200-784), the forward product, the weight gradient and
    (except the first layer) the input gradient, at batch ``batch_size``; median of repeats."""
    layers = [(PIXELS, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, 2 * LATENT)]
    layers += [(LATENT, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, PIXELS)]
    tensors = []
    for index, (fan_in, fan_out) in enumerate(layers):
        h = torch.randn(batch_size, fan_in)
        w, b = torch.randn(fan_out, fan_in) * 0.05, torch.zeros(fan_out)
        g = torch.randn(batch_size, fan_out)
        tensors.append((h, w, b, g, index > 0))

    def step() -> None:
        for h, w, b, g, below in tensors:
            torch.addmm(b, h, w.t())
            torch.mm(g.t(), h)
            if below:
                torch.mm(g, w)

    for _ in range(20):
        step()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=4000, help="training images per repeat")
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-pyro", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/vae_speed_b20.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_at_start = list(os.getloadavg())
    images = load_dataset("mnist", "train").images[: args.examples]
    batch = args.batch_size
    contenders = {
        LATENTVI: latentvi_epoch(images, batch, 0),
        "latentvi (fit, through autograd: before issue 22)": latentvi_epoch(
            images, batch, 0, autograd=True
        ),
        "idiomatic PyTorch (DataLoader, Adam)": idiomatic_epoch(images, batch, 0),
        "idiomatic PyTorch, Adam(fused=True)": idiomatic_epoch(images, batch, 0, fused=True),
    }
    if not args.no_pyro:
        contenders["Pyro SVI (TraceMeanField_ELBO)"] = pyro_epoch(images, batch, 0)
    rate = matmul_rate()
    floor_before = matmul_floor(batch)
    times = race(contenders, args.repeats)
    floor_after = matmul_floor(batch)
    rate_after = matmul_rate()
    steps = -(-args.examples // batch)
    flops = flops_per_step(batch)
    ms = {
        clock: {n: statistics.median(v) / steps * 1e3 for n, v in t.items()}
        for clock, t in times.items()
    }
    matmul = (rate + rate_after) / 2
    floor = (floor_before + floor_after) / 2
    wall = ms["wall"]
    results = {
        "command": "python " + " ".join(sys.argv),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
            "load_average_at_start": load_at_start,
        },
        "batch_size": batch,
        "examples_per_repeat": args.examples,
        "mflop_per_step": flops / 1e6,
        "matmul_gflops_2048": {"before": rate / 1e9, "after": rate_after / 1e9},
        "matmul_floor_ms": {"before": floor_before * 1e3, "after": floor_after * 1e3},
        "matmul_floor_gflops": flops / floor / 1e9,
        "ms_per_step_median": wall,
        "cpu_ms_per_step_median": ms["cpu"],
        "ms_per_step_all": {n: [s / steps * 1e3 for s in v] for n, v in times["wall"].items()},
        "speedup_of_latentvi": {n: wall[n] / wall[LATENTVI] for n in wall if n != LATENTVI},
        "cpu_speedup_of_latentvi": {
            n: ms["cpu"][n] / ms["cpu"][LATENTVI] for n in wall if n != LATENTVI
        },
        "gflops": {n: flops / (m / 1e3) / 1e9 for n, m in wall.items()},
        "fraction_of_matmul_rate": {n: flops / (m / 1e3) / matmul for n, m in wall.items()},
        "latentvi_over_matmul_floor": wall[LATENTVI] / (floor * 1e3),
    }
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    return save_results(args.out, results)


if __name__ == "__main__":
    main()
