"""VAE training speed: latentvi's loop against an idiomatic PyTorch loop and Pyro SVI.

Same model (Burda et al.'s 784-200-200-50 tanh VAE, Bernoulli decoder, analytic KL), same data
(MNIST, dynamically binarized), same batch size and optimizer (Adam, lr 1e-3). Each contender
trains on the same slice of the training set per repeat; the repeats are interleaved so machine
load affects all of them alike, and the medians are reported. Also reports the FLOP rate reached,
as a fraction of the machine's measured float32 matmul rate.

    python benchmarks/bench_vae_speed.py [--examples 20000] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from latentvi.data import Batches, load_dataset
from latentvi.models.vae import VAE, VAEConfig
from latentvi.train import TrainConfig, fit
from results_io import save_results

HIDDEN, LATENT, PIXELS = 200, 50, 784


def latentvi_epoch(images: torch.Tensor, batch_size: int, seed: int):
    """One epoch through the library's own loop (``latentvi.train.fit``), no run folder."""
    torch.manual_seed(seed)
    model = VAE((1, 28, 28), VAEConfig(latent_dim=LATENT, hidden=(HIDDEN, HIDDEN)))
    batches = Batches(images, batch_size=batch_size, binarize="dynamic")
    config = TrainConfig(epochs=1, progress=False, tensorboard=False, log_every=10**9, seed=seed)

    def run() -> float:
        started = time.perf_counter()
        fit(
            model,
            lambda epoch, generator, start=0: batches.iterate(generator, start=start),
            batches.num_batches,
            config,
            optimizer_factory=lambda m: torch.optim.Adam(m.parameters(), 1e-3, fused=True),
        )
        return time.perf_counter() - started

    return run


class IdiomaticVAE(nn.Module):
    """The VAE as most tutorials write it."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(PIXELS, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, HIDDEN), nn.Tanh()
        )
        self.mu, self.logvar = nn.Linear(HIDDEN, LATENT), nn.Linear(HIDDEN, LATENT)
        self.decoder = nn.Sequential(
            nn.Linear(LATENT, HIDDEN),
            nn.Tanh(),
            nn.Linear(HIDDEN, HIDDEN),
            nn.Tanh(),
            nn.Linear(HIDDEN, PIXELS),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        logits = self.decoder(z)
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        return (recon + kl) / x.shape[0]


def idiomatic_epoch(images: torch.Tensor, batch_size: int, seed: int):
    torch.manual_seed(seed)
    model = IdiomaticVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(images.flatten(1)), batch_size=batch_size, shuffle=True)

    def run() -> float:
        started = time.perf_counter()
        for (x,) in loader:
            x = torch.bernoulli(x)
            loss = model(x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return time.perf_counter() - started

    return run


def pyro_epoch(images: torch.Tensor, batch_size: int, seed: int):
    import pyro
    import pyro.distributions as dist
    from pyro.infer import SVI, TraceMeanField_ELBO

    pyro.clear_param_store()
    torch.manual_seed(seed)
    reference = IdiomaticVAE()

    def model(x):
        pyro.module("decoder", reference.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], LATENT), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=reference.decoder(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", reference.encoder)
        pyro.module("mu", reference.mu)
        pyro.module("logvar", reference.logvar)
        with pyro.plate("data", x.shape[0]):
            h = reference.encoder(x)
            scale = torch.exp(0.5 * reference.logvar(h))
            pyro.sample("z", dist.Normal(reference.mu(h), scale).to_event(1))

    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), TraceMeanField_ELBO())
    loader = DataLoader(TensorDataset(images.flatten(1)), batch_size=batch_size, shuffle=True)

    def run() -> float:
        started = time.perf_counter()
        for (x,) in loader:
            svi.step(torch.bernoulli(x))
        return time.perf_counter() - started

    return run


def flops_per_step(batch_size: int) -> float:
    """Matmul FLOPs of one training step: forward 2·MACs, backward twice that, except the input
    gradient of the first layer, which is not needed."""
    layers = [
        (PIXELS, HIDDEN),
        (HIDDEN, HIDDEN),
        (HIDDEN, 2 * LATENT),
        (LATENT, HIDDEN),
        (HIDDEN, HIDDEN),
        (HIDDEN, PIXELS),
    ]
    macs = sum(a * b for a, b in layers) * batch_size
    return 2 * macs * 3 - 2 * PIXELS * HIDDEN * batch_size


def matmul_rate(seconds: float = 2.0) -> float:
    """The machine's float32 matmul FLOP rate (2048² square matmuls)."""
    a = torch.randn(2048, 2048)
    a @ a
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ a
        count += 1
    return 2 * 2048**3 * count / (time.perf_counter() - started)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20000, help="training examples per epoch")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-pyro", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/vae_speed.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    images = load_dataset("mnist", "train").images[: args.examples]
    contenders = {
        "latentvi": latentvi_epoch(images, args.batch_size, 0),
        "idiomatic PyTorch (DataLoader)": idiomatic_epoch(images, args.batch_size, 0),
    }
    if not args.no_pyro:
        contenders["Pyro SVI (TraceMeanField_ELBO)"] = pyro_epoch(images, args.batch_size, 0)
    for run in contenders.values():  # warm-up
        run()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, run in contenders.items():
            times[name].append(run())
    medians = {name: statistics.median(values) for name, values in times.items()}
    ours = medians["latentvi"]
    steps = -(-args.examples // args.batch_size)
    rate = matmul_rate()
    achieved = flops_per_step(args.batch_size) * steps / ours
    results = {
        "command": "python " + " ".join(sys.argv),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
            "load_average": list(os.getloadavg()),
        },
        "examples_per_epoch": args.examples,
        "batch_size": args.batch_size,
        "seconds_per_epoch_median": medians,
        "seconds_all": times,
        "speedup_of_latentvi": {
            name: medians[name] / ours for name in medians if name != "latentvi"
        },
        "matmul_gflops": rate / 1e9,
        "latentvi_gflops": achieved / 1e9,
        "fraction_of_matmul_rate": achieved / rate,
        "full_epoch_seconds_estimate": {n: m * 60000 / args.examples for n, m in medians.items()},
    }
    return save_results(args.out, results)


if __name__ == "__main__":
    main()
