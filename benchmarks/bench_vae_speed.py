"""VAE training speed: latentvi's loop against an idiomatic PyTorch loop and Pyro SVI.

Same model (Burda et al.'s 784-200-200-50 tanh VAE, Bernoulli decoder, analytic KL), same data
(MNIST, dynamically binarized), same batch size and optimizer (Adam, lr 1e-3). Each contender
trains on the same slice of the training set per repeat; the repeats are interleaved so machine
load affects all of them alike, and the medians are reported. Also reports the FLOP rate reached,
as a fraction of the machine's measured float32 matmul rate. Contenders: latentvi (fused loss and,
for reference, its generic loss), an idiomatic PyTorch loop, Pyro SVI, pythae's trainer (if it
imports); then the IWAE-k objective (k = 50), latentvi against an idiomatic PyTorch IWAE loop.

Mixed precision (opt-in in latentvi, ``TrainConfig.matmul_precision="bfloat16"``): latentvi with
bfloat16 inside its float32 matmuls is compared with the idiomatic loop under the same setting
(``torch.set_float32_matmul_precision("medium")``) and under ``torch.autocast("cpu", bfloat16)``,
so that no row gains from precision alone. Also the idiomatic loop with ``Adam(fused=True)``, the
one-keyword change a careful user would make. Times are wall-clock seconds; CPU seconds of the
process (``time.process_time``) are recorded as well, as they suffer less from a loaded machine.

    python benchmarks/bench_vae_speed.py [--examples 20000] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import math
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
LATENTVI, BF16 = "latentvi", "bfloat16"


def latentvi_epoch(
    images: torch.Tensor,
    batch_size: int,
    seed: int,
    fused: bool = True,
    matmul_precision: str = "float32",
    **overrides,
):
    """One epoch through the library's own loop (``latentvi.train.fit``) with its default
    optimizer (AdamW, fused kernel, lr 1e-3, no weight decay: Adam), no run folder.

    ``fused=False`` forces the generic, Distribution-based loss instead of the fused pass."""
    torch.manual_seed(seed)
    config = VAEConfig(latent_dim=LATENT, hidden=(HIDDEN, HIDDEN), **overrides)
    model = VAE((1, 28, 28), config)
    model.fused = fused
    batches = Batches(images, batch_size=batch_size, binarize="dynamic")
    config = TrainConfig(
        epochs=1,
        progress=False,
        tensorboard=False,
        log_every=10**9,
        seed=seed,
        matmul_precision=matmul_precision,
    )

    def run() -> None:
        fit(
            model,
            batches.make_batches,
            batches.num_batches,
            config,
        )

    return run


@contextlib.contextmanager
def matmul_precision(name: str):
    """``torch.set_float32_matmul_precision(name)`` inside the block."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(name)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def under_precision(name: str, run):
    """``run`` (forward and backward passes alike) under that float32 matmul precision."""

    def wrapped() -> None:
        with matmul_precision(name):
            run()

    return wrapped


def autocast_bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


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


def idiomatic_epoch(
    images: torch.Tensor, batch_size: int, seed: int, context=contextlib.nullcontext, **adam
):
    """The tutorial loop; ``context()`` wraps each step (e.g. autocast), ``adam`` goes to Adam."""
    torch.manual_seed(seed)
    model = IdiomaticVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, **adam)
    loader = DataLoader(TensorDataset(images.flatten(1)), batch_size=batch_size, shuffle=True)

    def run() -> None:
        for (x,) in loader:
            x = torch.bernoulli(x)
            with context():
                loss = model(x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

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

    def run() -> None:
        for (x,) in loader:
            svi.step(torch.bernoulli(x))

    return run


def idiomatic_iwae_epoch(images: torch.Tensor, batch_size: int, seed: int, k: int):
    """IWAE-k (Burda et al. 2016) as one would write it in plain PyTorch, same networks."""
    torch.manual_seed(seed)
    model = IdiomaticVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(images.flatten(1)), batch_size=batch_size, shuffle=True)
    log_2pi = math.log(2 * math.pi)

    def loss_of(x: torch.Tensor) -> torch.Tensor:
        h = model.encoder(x)
        mu, logvar = model.mu(h), model.logvar(h)
        std = torch.exp(0.5 * logvar)
        eps = torch.randn(k, *mu.shape)
        z = mu + std * eps  # (k, B, Z)
        logits = model.decoder(z)  # (k, B, D)
        log_px = -F.binary_cross_entropy_with_logits(
            logits, x.expand_as(logits), reduction="none"
        ).sum(-1)
        log_pz = -0.5 * (z.pow(2) + log_2pi).sum(-1)
        log_qz = -0.5 * (eps.pow(2) + logvar + log_2pi).sum(-1)
        bound = torch.logsumexp(log_px + log_pz - log_qz, 0) - math.log(k)
        return -bound.mean()

    def run() -> None:
        for (x,) in loader:
            loss = loss_of(torch.bernoulli(x))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return run


def pythae_epoch(images: torch.Tensor, batch_size: int, seed: int):
    """One epoch of pythae's own trainer loop (``BaseTrainer.train_step``), same networks.

    pythae has no dynamic binarization: it gets one static binarization of the same images, which
    spares it the per-epoch draws the other contenders pay for."""
    import logging
    import tempfile

    from pythae import models as pythae_models
    from pythae.data.datasets import BaseDataset
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.trainers import BaseTrainer, BaseTrainerConfig

    torch.manual_seed(seed)
    reference = IdiomaticVAE()

    class Encoder(BaseEncoder):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.mu, self.logvar = reference.encoder, reference.mu, reference.logvar

        def forward(self, x):
            h = self.body(x.flatten(1))
            return ModelOutput(embedding=self.mu(h), log_covariance=self.logvar(h))

    class Decoder(BaseDecoder):
        def __init__(self) -> None:
            super().__init__()
            self.body = reference.decoder

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.body(z)))

    config = pythae_models.VAEConfig(
        input_dim=(1, 28, 28), latent_dim=LATENT, reconstruction_loss="bce"
    )
    model = pythae_models.VAE(config, encoder=Encoder(), decoder=Decoder())
    data = torch.bernoulli(images, generator=torch.Generator().manual_seed(seed))
    training = BaseTrainerConfig(
        output_dir=tempfile.mkdtemp(prefix="pythae-bench-"),
        num_epochs=1,
        per_device_train_batch_size=batch_size,
        learning_rate=1e-3,
        no_cuda=True,
    )
    logging.getLogger("pythae").setLevel(logging.WARNING)
    dataset = BaseDataset(data, torch.zeros(len(data)))
    trainer = BaseTrainer(model, train_dataset=dataset, training_config=training)
    trainer.prepare_training()  # its optimizer and callbacks (progress bar)

    def run() -> None:
        trainer.train_step(epoch=1)

    return run


def flops_per_step(batch_size: int, samples: int = 1) -> float:
    """Matmul FLOPs of one training step: forward 2·MACs, backward twice that, except the input
    gradient of the first encoder layer, which is not needed. The decoder runs on
    ``samples · batch_size`` rows (IWAE-k: k samples of z per image)."""
    encoder = [(PIXELS, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, 2 * LATENT)]
    decoder = [(LATENT, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, PIXELS)]
    macs = sum(a * b for a, b in encoder) * batch_size
    macs += sum(a * b for a, b in decoder) * batch_size * samples
    return 2 * macs * 3 - 2 * PIXELS * HIDDEN * batch_size


def matmul_rate(seconds: float = 2.0, precision: str = "highest") -> float:
    """The machine's float32 matmul FLOP rate (2048² square matmuls) at that
    ``torch.set_float32_matmul_precision`` (``medium``: bfloat16 inside)."""
    with matmul_precision(precision):
        return _matmul_rate(seconds)


def _matmul_rate(seconds: float) -> float:
    a = torch.randn(2048, 2048)
    a @ a
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ a
        count += 1
    return 2 * 2048**3 * count / (time.perf_counter() - started)


def first_layer_probe(repeats: int = 300) -> dict[str, float]:
    """Microseconds of the encoder's first product ``[100, 784] × [784, 200]`` (binary x), at
    float32 and bfloat16 matmul precision, with warm caches and right after streaming 16 MB
    through them (as a training step does: weights, gradients and Adam's moments ≈ 7 MB, plus
    whatever else runs on the machine)."""
    x = (torch.rand(100, PIXELS) < 0.13).float()
    weight, bias = torch.randn(HIDDEN, PIXELS) * 0.03, torch.zeros(HIDDEN)
    other = torch.randn(4_000_000)
    result = {}
    for name, precision in (("float32", "highest"), (BF16, "medium")):
        with matmul_precision(precision):
            for cold in (False, True):
                for _ in range(20):
                    torch.addmm(bias, x, weight.t())
                mm = 0.0
                for _ in range(repeats):
                    if cold:
                        other.mul_(1.0)
                    started = time.perf_counter()
                    torch.addmm(bias, x, weight.t())
                    mm += time.perf_counter() - started
                result[f"{name}, {'cold' if cold else 'warm'} cache"] = mm / repeats * 1e6
    return result


def race(contenders: dict, repeats: int) -> dict[str, dict[str, list[float]]]:
    """Run each contender once to warm up, then `repeats` interleaved rounds: wall-clock and
    process CPU seconds of each run."""
    for run in contenders.values():
        run()
    times = {clock: {name: [] for name in contenders} for clock in ("wall", "cpu")}
    for _ in range(repeats):
        for name, run in contenders.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            times["cpu"][name].append(time.process_time() - cpu)
            times["wall"][name].append(time.perf_counter() - wall)
    return times


def summary(times, examples, batch_size, samples, rates, reference=LATENTVI) -> dict:
    """Medians, ratios to ``reference`` (> 1: it is faster) and the FLOP rate of the latentvi
    rows as a fraction of the matmul rate of their precision."""
    medians = {clock: {n: statistics.median(v) for n, v in t.items()} for clock, t in times.items()}
    steps = -(-examples // batch_size)
    flops = flops_per_step(batch_size, samples) * steps
    wall = medians["wall"]
    result = {
        "examples_per_epoch": examples,
        "seconds_per_epoch_median": wall,
        "cpu_seconds_per_epoch_median": medians["cpu"],
        "seconds_all": times["wall"],
        "cpu_seconds_all": times["cpu"],
        "ratio_to_latentvi": {n: wall[n] / wall[reference] for n in wall if n != reference},
        "cpu_ratio_to_latentvi": {
            n: medians["cpu"][n] / medians["cpu"][reference] for n in wall if n != reference
        },
        "full_epoch_seconds_estimate": {n: m * 60000 / examples for n, m in wall.items()},
    }
    for name, seconds in wall.items():
        if name.startswith(LATENTVI):
            rate = rates["bfloat16" if BF16 in name else "float32"]
            result.setdefault("gflops", {})[name] = flops / seconds / 1e9
            result.setdefault("fraction_of_matmul_rate", {})[name] = flops / seconds / rate
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20000, help="training examples per epoch")
    parser.add_argument("--iwae-examples", type=int, default=2000, help="examples, IWAE rows")
    parser.add_argument("--iwae-samples", type=int, default=50, help="k of the IWAE rows")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-pyro", action="store_true")
    parser.add_argument("--no-pythae", action="store_true")
    parser.add_argument("--no-iwae", action="store_true")
    parser.add_argument("--no-bf16", action="store_true", help="leave out the bfloat16 rows")
    parser.add_argument("--out", default="benchmarks/results/vae_speed.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_at_start = list(os.getloadavg())
    data = load_dataset("mnist", "train").images
    images, batch = data[: args.examples], args.batch_size
    contenders = {
        LATENTVI: latentvi_epoch(images, batch, 0),
        "latentvi, generic loss (fused pass off)": latentvi_epoch(images, batch, 0, fused=False),
        "idiomatic PyTorch (DataLoader)": idiomatic_epoch(images, batch, 0),
        "idiomatic PyTorch, Adam(fused=True)": idiomatic_epoch(images, batch, 0, fused=True),
    }
    if not args.no_bf16:
        contenders[f"latentvi, matmul_precision={BF16}"] = latentvi_epoch(
            images, batch, 0, matmul_precision=BF16
        )
        contenders[f"idiomatic PyTorch, {BF16} matmul precision (medium)"] = under_precision(
            "medium", idiomatic_epoch(images, batch, 0)
        )
        contenders[f"idiomatic PyTorch, autocast({BF16})"] = idiomatic_epoch(
            images, batch, 0, autocast_bf16
        )
    if not args.no_pyro:
        contenders["Pyro SVI (TraceMeanField_ELBO)"] = pyro_epoch(images, batch, 0)
    if not args.no_pythae:
        try:
            contenders["pythae (BaseTrainer.train_step)"] = pythae_epoch(images, batch, 0)
        except ImportError as error:
            print(f"pythae skipped: {error}", file=sys.stderr)
    rates = {"float32": matmul_rate(), BF16: matmul_rate(precision="medium")}
    elbo = summary(race(contenders, args.repeats), args.examples, batch, 1, rates)
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
        "matmul_gflops": {name: rate / 1e9 for name, rate in rates.items()},
        "elbo": elbo,
    }
    if not args.no_iwae:
        k, few = args.iwae_samples, data[: args.iwae_examples]
        iwae = {"objective": "iwae", "num_samples": k}
        contenders = {
            LATENTVI: latentvi_epoch(few, batch, 0, **iwae),
            "latentvi, generic loss (fused pass off)": latentvi_epoch(
                few, batch, 0, fused=False, **iwae
            ),
            "idiomatic PyTorch IWAE (DataLoader)": idiomatic_iwae_epoch(few, batch, 0, k),
        }
        if not args.no_bf16:
            contenders[f"latentvi, matmul_precision={BF16}"] = latentvi_epoch(
                few, batch, 0, matmul_precision=BF16, **iwae
            )
        results[f"iwae_k{k}"] = summary(
            race(contenders, args.repeats), args.iwae_examples, batch, k, rates
        )
    results["first_layer_product_microseconds"] = first_layer_probe()
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    return save_results(args.out, results)


if __name__ == "__main__":
    main()
