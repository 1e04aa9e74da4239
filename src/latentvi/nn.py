"""Network bodies and the heads that turn their features into a ``Distribution``.

* :class:`MLP` — a fully connected body ``[*B, in] -> [*B, out]``.
* :class:`GaussianHead` — splits ``[*B, 2Z]`` features into a location and a raw scale and returns the
  diagonal Gaussian ``N(loc, diag(softplus(raw)²))`` with batch ``[*B]`` and event ``[Z]``. It holds
  no parameters, so it follows any body whose last layer has ``2Z`` outputs (a conv body later).
* :class:`ConvEncoder` / :class:`ConvDecoder` — stride-2 convolutional bodies for images.
* :class:`DiagonalGaussianEncoder` — ``MLP`` then ``GaussianHead``: the amortized posterior
  q_φ(z|x) of Kingma & Welling (2014), one network that maps every x to its own Gaussian.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Independent

from latentvi.config import check_positive_int
from latentvi.distributions import diagonal_gaussian, positive_scale

__all__ = ["MLP", "ConvDecoder", "ConvEncoder", "DiagonalGaussianEncoder", "GaussianHead"]

Activation = Callable[[], nn.Module]


class MLP(nn.Sequential):
    """Linear layers with ``activation`` between them (none after the last): ``[*B, in] -> [*B, out]``.

    Args:
        in_features: size of the input's last dimension.
        hidden: sizes of the hidden layers, e.g. ``(64,)`` or ``(256, 256)``; ``()`` is one linear map.
        out_features: size of the output's last dimension.
        activation: a factory for the nonlinearity, e.g. ``nn.Tanh`` (default) or ``nn.ReLU``.
        layer_norm: a ``LayerNorm`` after each hidden linear layer, before its activation (as in
            the critics of Ball et al. 2023, RLPD).
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation: Activation = nn.Tanh,
        layer_norm: bool = False,
    ) -> None:
        check_positive_int("in_features", in_features)
        check_positive_int("out_features", out_features)
        hidden = tuple(hidden)
        for size in hidden:
            check_positive_int("hidden (each layer size)", size)
        sizes = (in_features, *hidden, out_features)
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
            if i > 0:
                if layer_norm:
                    layers.append(nn.LayerNorm(fan_in))
                layers.append(activation())
            layers.append(nn.Linear(fan_in, fan_out))
        super().__init__(*layers)
        self.in_features, self.out_features = in_features, out_features


class GaussianHead(nn.Module):
    """Features ``[*B, ..., 2Z, ...]`` -> diagonal Gaussian with event ``[Z]`` (or ``event_dims`` dims).

    The features are split in two along dimension ``-event_dims``: the first half is the location,
    the second the raw scale, mapped through :func:`latentvi.distributions.positive_scale`
    (softplus + ``min_scale``). With ``event_dims=1``: ``[*B, 2Z] -> `` batch ``[*B]``, event ``[Z]``;
    with ``event_dims=3`` an image body's ``[*B, 2C, H, W]`` becomes event ``[C, H, W]``.
    """

    def __init__(self, event_dims: int = 1, min_scale: float = 1e-5) -> None:
        super().__init__()
        self.event_dims = check_positive_int("event_dims", event_dims)
        self.min_scale = min_scale

    def forward(self, features: Tensor) -> Independent:
        dim = -self.event_dims
        if features.dim() < self.event_dims or features.shape[dim] % 2:
            raise ValueError(
                f"features has shape {tuple(features.shape)}: GaussianHead needs an even size "
                f"(2 × the event size) in dimension {dim}"
            )
        loc, raw_scale = features.chunk(2, dim)
        scale = positive_scale(raw_scale, self.min_scale)  # valid by construction: skip checks
        return diagonal_gaussian(loc, scale, self.event_dims, validate_args=False)


class DiagonalGaussianEncoder(nn.Module):
    """q_φ(z|x) = N(μ_φ(x), diag σ_φ(x)²) from an MLP: ``x [*B, D]`` -> batch ``[*B]``, event ``[Z]``.

    The amortized inference network of Kingma & Welling (2014): one set of weights φ serves every
    data point, so q for a new x costs one forward pass instead of an optimization.

    Args:
        in_features: data dimension ``D``.
        latent_dim: latent dimension ``Z``.
        hidden: hidden layer sizes of the MLP, e.g. ``(64,)``.
        activation: nonlinearity factory (``nn.Tanh`` default, ``nn.ReLU`` ...).
        min_scale: floor added to the softplus scale.
    """

    def __init__(
        self,
        in_features: int,
        latent_dim: int,
        hidden: Sequence[int] = (64,),
        activation: Activation = nn.Tanh,
        min_scale: float = 1e-5,
    ) -> None:
        super().__init__()
        self.latent_dim = check_positive_int("latent_dim", latent_dim)
        self.body = MLP(in_features, hidden, 2 * latent_dim, activation)
        self.head = GaussianHead(1, min_scale)
        self.in_features = in_features

    def forward(self, x: Tensor) -> Independent:
        """``x [*B, D]`` -> q(z|x) with batch ``[*B]``, event ``[Z]``."""
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"x has shape {tuple(x.shape)} but the encoder expects [*B, {self.in_features}]"
            )
        return self.head(self.body(x))


def _conv_spatial(data_shape: Sequence[int], layers: int) -> tuple[int, int]:
    _, height, width = data_shape
    factor = 2**layers
    if height % factor or width % factor:
        raise ValueError(
            f"data_shape {tuple(data_shape)}: height and width must be divisible by 2^{layers} = "
            f"{factor} for {layers} stride-2 convolutions; pad the images or change channels"
        )
    return height // factor, width // factor


def _flatten_batch(x: Tensor, event_dims: int) -> tuple[Tensor, torch.Size]:
    batch = x.shape[: x.dim() - event_dims]
    return x.reshape(-1, *x.shape[x.dim() - event_dims :]), batch


class ConvEncoder(nn.Module):
    """Stride-2 convolutions (kernel 4, padding 1) then flatten: ``[*B, C, H, W] -> [*B, F]``.

    Each layer halves the height and width, so H and W must be divisible by ``2^len(channels)``;
    ``out_features`` is ``channels[-1] · H/2^L · W/2^L``.
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        channels: Sequence[int] = (32, 64),
        activation: Activation = nn.ReLU,
    ) -> None:
        super().__init__()
        channels = tuple(check_positive_int("channels (each)", c) for c in channels)
        height, width = _conv_spatial(data_shape, len(channels))
        layers: list[nn.Module] = []
        previous = data_shape[0]
        for size in channels:
            layers += [nn.Conv2d(previous, size, 4, stride=2, padding=1), activation()]
            previous = size
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.out_features = channels[-1] * height * width

    def forward(self, x: Tensor) -> Tensor:
        flat, batch = _flatten_batch(x, 3)
        return self.body(flat).reshape(*batch, self.out_features)


class ConvDecoder(nn.Module):
    """Linear map to a small feature map, then stride-2 transposed convolutions.

    ``[*B, Z] -> [*B, C, H, W]``: the mirror of :class:`ConvEncoder` with the same ``channels``.
    """

    def __init__(
        self,
        latent_dim: int,
        data_shape: Sequence[int],
        channels: Sequence[int] = (32, 64),
        activation: Activation = nn.ReLU,
    ) -> None:
        super().__init__()
        channels = tuple(check_positive_int("channels (each)", c) for c in channels)
        self.height, self.width = _conv_spatial(data_shape, len(channels))
        self.top_channels = channels[-1]
        self.data_shape = tuple(data_shape)
        self.project = nn.Linear(latent_dim, channels[-1] * self.height * self.width)
        layers: list[nn.Module] = [activation()]
        reversed_channels = (*reversed(channels), data_shape[0])
        for i, (fan_in, fan_out) in enumerate(itertools.pairwise(reversed_channels)):
            layers.append(nn.ConvTranspose2d(fan_in, fan_out, 4, stride=2, padding=1))
            if i < len(channels) - 1:
                layers.append(activation())
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        flat, batch = _flatten_batch(z, 1)
        features = self.project(flat).reshape(-1, self.top_channels, self.height, self.width)
        return self.body(features).reshape(*batch, *self.data_shape)
