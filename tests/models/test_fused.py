"""The fused fast path of the MLP VAE equals the generic, Distribution-based reference path."""

import pytest
import torch

from latentvi.models import fused
from latentvi.models.vae import VAE, VAEConfig
from latentvi.train.precision import bfloat16_matmuls_in_effect, medium_matmul_precision

SHAPE = (1, 8, 8)


def model_and_data(dtype=torch.float64, **overrides):
    torch.manual_seed(0)
    config = {"latent_dim": 3, "hidden": (16, 12), **overrides}
    model = VAE(SHAPE, VAEConfig(**config)).to(dtype)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, *SHAPE, generator=g, dtype=dtype)
    return model, (x > 0.5).to(dtype)


def loss_and_gradients(model, x, use_fused, seed=2):
    model.fused = use_fused
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss, metrics = model.loss(x)
    loss.backward()
    return loss.detach(), metrics, [p.grad.clone() for p in model.parameters()]


CASES = [
    {},
    {"num_samples": 4, "beta": 0.3},
    {"activation": "relu"},
    {"hidden": (10,)},
    {"objective": "iwae", "num_samples": 7},
    {"objective": "iwae", "num_samples": 1},
    {"objective": "iwae", "num_samples": 5, "activation": "relu", "hidden": (9, 11, 7)},
]


@pytest.mark.parametrize("project_from", [1, 1000])
@pytest.mark.parametrize("overrides", CASES)
def test_fused_loss_equals_the_generic_path_in_value_gradients_and_metrics(
    overrides, project_from, monkeypatch
):
    """Same seed, same noise: float64 agreement to 1e-12 (only the summation order differs),
    with Σ x·ℓ computed both ways (through the last hidden layer, or directly)."""
    monkeypatch.setattr(fused, "_PROJECT_FROM", project_from)
    model, x = model_and_data(**overrides)
    assert fused.applies(model)
    fast = loss_and_gradients(model, x, True)
    reference = loss_and_gradients(model, x, False)
    torch.testing.assert_close(fast[0], reference[0], rtol=1e-12, atol=1e-12)
    assert fast[1].keys() == reference[1].keys()
    for name in reference[1]:
        torch.testing.assert_close(fast[1][name], reference[1][name], rtol=1e-12, atol=1e-12)
    for got, want in zip(fast[2], reference[2], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert max(g.abs().max() for g in reference[2]) > 1e-3  # the gradients are not trivial


def test_fused_loss_in_float32_and_on_non_binary_pixels():
    """Grey-level x (a Bernoulli 'likelihood' of intensities) and float32: agreement to 1e-5."""
    model, _ = model_and_data(torch.float32)
    x = torch.rand(6, *SHAPE, generator=torch.Generator().manual_seed(3))
    fast, reference = (loss_and_gradients(model, x, f) for f in (True, False))
    torch.testing.assert_close(fast[0], reference[0], rtol=1e-5, atol=1e-5)
    for got, want in zip(fast[2], reference[2], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


class _Objective(torch.nn.Module):
    def __init__(self, model, x, function, samples):
        super().__init__()
        self.model, self.x, self.function, self.samples = model, x, function, samples

    def forward(self):
        torch.manual_seed(4)
        out = self.function(self.model, self.x, self.samples)
        return out[0] if self.function is fused.fused_iwae else out[0] + 0.7 * out[1]


@pytest.mark.parametrize("iwae", [False, True])
def test_fused_gradients_pass_gradcheck(iwae):
    """The hand-written backward against finite differences (both objectives, float64)."""
    overrides = {"objective": "iwae", "num_samples": 3} if iwae else {"num_samples": 2}
    model, x = model_and_data(hidden=(5,), **overrides)
    function = fused.fused_iwae if iwae else fused.fused_elbo
    objective = _Objective(model, x, function, overrides["num_samples"])
    names = [f"model.{name}" for name, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in model.parameters())

    def value(*tensors):
        return torch.func.functional_call(objective, dict(zip(names, tensors, strict=True)), ())

    assert torch.autograd.gradcheck(value, params, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "overrides",
    [
        {"body": "conv"},
        {"likelihood": "gaussian"},
        {"likelihood": "continuous-bernoulli"},
        {"stochastic_layers": 2},
        {"activation": "elu"},
        {"objective": "iwae", "num_samples": 3, "dreg": True},
    ],
)
def test_other_configs_take_the_generic_path(overrides):
    model, _ = model_and_data(**overrides)
    assert not fused.applies(model)


def test_a_retained_graph_gives_the_same_gradients_twice():
    model, x = model_and_data()
    loss, _ = model.loss(x)
    first = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
    second = torch.autograd.grad(loss, list(model.parameters()))
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_training_through_fit_resumes_bitwise_on_the_fused_path(tmp_path, objective, precision):
    """`fit` with the fused loss: 6 steps at once == 3 steps + resume 3, bitwise, on CPU, with
    either matmul precision."""
    from latentvi.data import Batches
    from latentvi.train import TrainConfig, fit

    images = torch.rand(30, *SHAPE, generator=torch.Generator().manual_seed(5))
    batches = Batches(images, batch_size=8, binarize="dynamic")

    def train(out, stops):
        model = None
        for index, stop in enumerate(stops):
            model, _ = model_and_data(torch.float32, objective=objective, num_samples=3)
            assert fused.applies(model)
            config = TrainConfig(
                max_steps=stop, lr=0.01, seed=1, checkpoint_every=3, progress=False,
                tensorboard=False, out=str(out), matmul_precision=precision,
            )  # fmt: skip
            fit(model, batches.make_batches, batches.num_batches, config, resume=index > 0)
        return model

    whole, resumed = train(tmp_path / "a", [6]), train(tmp_path / "b", [3, 6])
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    first, _ = model_and_data(torch.float32)
    assert not torch.equal(first.decoder[0].weight, whole.decoder[0].weight)  # it trained


def test_the_subnormal_floors_change_the_gradient_only_below_float32_resolution():
    """Large logits (|ℓ| up to ~100) and widely spread IWAE weights exercise the backward's
    floors (sigmoid(ℓ < −30), w̃ < 1e-20); in float64 the gradients still match the generic
    path to 1e-9 of their scale, far below float32's 6e-8 resolution."""
    model, x = model_and_data(objective="iwae", num_samples=20)
    with torch.no_grad():
        model.decoder[-1].weight.mul_(40.0)
        model.decoder[-1].bias.sub_(30.0)
        logits = model.decoder(torch.randn(20, 6, 3, dtype=torch.float64))
        assert (logits < fused._LOGIT_FLOOR).double().mean() > 0.1
        log_w = torch.stack([model.iwae(x, 1) for _ in range(20)])
        assert (torch.softmax(log_w, 0) < fused._WEIGHT_FLOOR).any()
    fast, reference = (loss_and_gradients(model, x, f) for f in (True, False))
    torch.testing.assert_close(fast[0], reference[0], rtol=1e-12, atol=1e-10)
    scale = max(g.abs().max() for g in reference[2])
    for got, want in zip(fast[2], reference[2], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-9 * scale)


@pytest.mark.skipif(
    not bfloat16_matmuls_in_effect(), reason="needs a CPU whose matmuls honour bfloat16 precision"
)
def test_bfloat16_matmul_precision_changes_the_gradients_only_at_bfloat16_resolution():
    """float32 MNIST-sized model with bfloat16 inside the matmuls (what
    ``TrainConfig(matmul_precision="bfloat16")`` sets): the loss moves by < 1e-4 of itself and
    each gradient by < 1 % of its norm (bfloat16 keeps 8 bits, so inputs are rounded by ≤ 0.4 %;
    measured 2e-6 and 0.005–0.4 %), and they do move, so the setting is in effect."""
    torch.manual_seed(0)
    model = VAE((1, 28, 28), VAEConfig(latent_dim=50, hidden=(200, 200)))
    x = (torch.rand(100, 1, 28, 28, generator=torch.Generator().manual_seed(1)) < 0.13).float()
    exact = loss_and_gradients(model, x, True)
    with medium_matmul_precision():
        rounded = loss_and_gradients(model, x, True)
    assert abs(rounded[0] - exact[0]) < 1e-4 * abs(exact[0])
    assert rounded[0] != exact[0]
    for got, want in zip(rounded[2], exact[2], strict=True):
        assert (got - want).norm() < 0.01 * want.norm()
