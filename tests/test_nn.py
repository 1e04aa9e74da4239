"""Network bodies and Gaussian heads: shapes over batch shapes, valid scales, clear errors."""

import pytest
import torch
from torch import nn
from torch.distributions import Independent, Normal

from latentvi.nn import MLP, DiagonalGaussianEncoder, GaussianHead

BATCHES = [(), (4,), (2, 3)]


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("hidden", [(), (8,), (8, 6)])
def test_mlp_shapes(batch, hidden):
    torch.manual_seed(0)
    mlp = MLP(5, hidden, 3)
    assert mlp(torch.randn(*batch, 5)).shape == (*batch, 3)
    linear_layers = [m for m in mlp if isinstance(m, nn.Linear)]
    assert len(linear_layers) == len(hidden) + 1
    assert isinstance(mlp[-1], nn.Linear)  # no activation after the output layer


def test_mlp_activation_between_layers_only():
    mlp = MLP(4, (7, 7), 2, activation=nn.ReLU)
    kinds = [type(m) for m in mlp]
    assert kinds == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]


def test_mlp_layer_norm_normalizes_each_hidden_layer_whatever_the_input_scale():
    """With ``layer_norm`` each hidden layer's pre-activations have mean 0 and variance 1 per
    example (the norm's initial affine map is the identity), for inputs 1e-3 or 1e3 in scale."""
    torch.manual_seed(0)
    mlp = MLP(4, (7, 9), 2, activation=nn.ReLU, layer_norm=True)
    kinds = [type(m) for m in mlp]
    assert kinds == [nn.Linear, nn.LayerNorm, nn.ReLU, nn.Linear, nn.LayerNorm, nn.ReLU, nn.Linear]
    for scale in (1e-3, 1e3):
        hidden = mlp[1](mlp[0](scale * torch.randn(5, 4)))
        torch.testing.assert_close(hidden.mean(-1), torch.zeros(5), atol=1e-5, rtol=0)
        torch.testing.assert_close(hidden.var(-1, unbiased=False), torch.ones(5), atol=1e-2, rtol=0)


@pytest.mark.parametrize("batch", BATCHES)
def test_gaussian_head_shapes_and_values(batch):
    torch.manual_seed(0)
    features = torch.randn(*batch, 6)
    q = GaussianHead()(features)
    assert isinstance(q, Independent) and isinstance(q.base_dist, Normal)
    assert q.batch_shape == batch and q.event_shape == (3,)
    torch.testing.assert_close(q.mean, features[..., :3])
    expected_scale = nn.functional.softplus(features[..., 3:]) + 1e-5
    torch.testing.assert_close(q.stddev, expected_scale)
    assert q.log_prob(q.sample()).shape == batch


def test_gaussian_head_image_event():
    q = GaussianHead(event_dims=3)(torch.randn(2, 6, 4, 4))  # 2C = 6 channels
    assert q.batch_shape == (2,) and q.event_shape == (3, 4, 4)


@pytest.mark.parametrize("batch", BATCHES)
def test_encoder_shapes(batch):
    torch.manual_seed(0)
    encoder = DiagonalGaussianEncoder(5, 2, (16,), activation=nn.ReLU)
    q = encoder(torch.randn(*batch, 5))
    assert q.batch_shape == batch and q.event_shape == (2,)
    assert (q.stddev > 0).all()
    z = q.rsample((7,))
    assert z.shape == (7, *batch, 2)
    z.sum().backward()  # gradients reach φ through the reparameterized sample
    assert all(p.grad is not None for p in encoder.parameters())


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="in_features"):
        MLP(0, (4,), 2)
    with pytest.raises(ValueError, match="hidden"):
        MLP(3, (4, 0), 2)
    with pytest.raises(ValueError, match="latent_dim"):
        DiagonalGaussianEncoder(3, 0)
    with pytest.raises(ValueError, match="x has shape"):
        DiagonalGaussianEncoder(3, 2)(torch.randn(4, 5))
    with pytest.raises(ValueError, match="even size"):
        GaussianHead()(torch.randn(4, 5))
