"""A VAE with your own networks: an encoder and a decoder of your design that return
``torch.distributions`` objects, trained by ``latentvi.fit`` and reopened with
``latentvi.load(run, model=...)``.

The data are scikit-learn's 8×8 digits (no download), binarized at 0.5: 1,797 images of 64 pixels.
The encoder is a small convolutional network giving q(z|x) = N(μ(x), diag σ(x)²); the decoder an
MLP giving independent Bernoulli pixels. Nothing of the architecture is saved in the run folder:
to reopen it, build the same model and let ``latentvi.load`` fill its weights.

    python examples/vae_own_networks.py --out runs/own-vae            # about 10 s
    python examples/vae_own_networks.py --out runs/own-vae --steps 2000 --latent-dim 8
"""

from __future__ import annotations

import argparse
import sys

import torch
from sklearn.datasets import load_digits
from torch import nn

import latentvi as lv
from latentvi.data import Batches


class ConvEncoder(nn.Module):
    """``x [B, 1, 8, 8] -> q(z|x)``, a diagonal Gaussian with event ``[Z]``."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU(),  # 4×4
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),  # 2×2
            nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(32 * 2 * 2, 2 * latent_dim)

    def forward(self, x: torch.Tensor):
        loc, raw_scale = self.head(self.body(x)).chunk(2, dim=-1)
        return lv.diagonal_gaussian(loc, nn.functional.softplus(raw_scale) + 1e-4)


class MLPDecoder(nn.Module):
    """``z [*S, B, Z] -> p(x|z)``, Bernoulli pixels with event ``[1, 8, 8]``."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, 128), nn.ReLU(), nn.Linear(128, 64))

    def forward(self, z: torch.Tensor):
        logits = self.net(z).unflatten(-1, (1, 8, 8))
        return lv.bernoulli(logits, event_dims=3)


def build(latent_dim: int) -> lv.CustomVAE:
    return lv.CustomVAE(ConvEncoder(latent_dim), MLPDecoder(latent_dim), latent_dim=latent_dim)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="run folder to write")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--latent-dim", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    images = torch.as_tensor(load_digits().images, dtype=torch.float32)[:, None] / 16.0
    images = (images > 0.5).float()  # [1797, 1, 8, 8]
    train, test = images[:1500], images[1500:]

    torch.manual_seed(args.seed)  # seed first, then build anything random
    model = build(args.latent_dim)
    batches = Batches(train, batch_size=100)
    config = lv.TrainConfig(
        max_steps=args.steps, lr=3e-3, seed=args.seed, out=args.out, progress=False,
        tensorboard=False, log_every=100,
    )  # fmt: skip
    lv.fit(model, batches.make_batches, batches, config)

    model.eval()
    with torch.no_grad():
        torch.manual_seed(1)
        elbo = model.elbo(test).mean().item()
        log_px = model.log_likelihood(test, importance_samples=200).mean().item()
    print(f"test ELBO {elbo:.3f}  test log p(x) (K = 200) {log_px:.3f}  nats per image")

    # Reopen: your own model, built the same way, filled with the run's weights.
    reopened = lv.load(args.out, model=build(args.latent_dim))
    with torch.no_grad():
        same = torch.equal(reopened.encode(test).mean, model.encode(test).mean)
        torch.manual_seed(1)
        reopened_elbo = reopened.elbo(test).mean().item()
    print(f"reopened: same posterior means {same}, test ELBO {reopened_elbo:.3f}")
    return 0 if same and reopened_elbo == elbo else 1


if __name__ == "__main__":
    sys.exit(main())
