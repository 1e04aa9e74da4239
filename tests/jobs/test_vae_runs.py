"""Training a VAE through the Python API on digits, and loading what it wrote."""

import math
import shutil

import pytest
import torch

import latentvi
from latentvi.jobs.vae import (
    DataConfig,
    _evaluation_images,
    evaluate_run,
    load_data,
    train_vae,
)
from latentvi.models.vae import VAEConfig
from latentvi.train import TrainConfig


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A VAE trained for 300 steps (20 epochs) on binarized digits: about 3 s on one core."""
    run_dir = tmp_path_factory.mktemp("runs") / "digits"
    model = VAEConfig(latent_dim=8, hidden=(64,))
    data = DataConfig(dataset="digits", batch_size=100, valid_examples=300)
    train = TrainConfig(epochs=20, progress=False, tensorboard=False, out=str(run_dir))
    summary = train_vae(model, data, train)
    return run_dir, summary


def test_held_out_elbo_improves_past_threshold(trained):
    _, summary = trained
    # An untrained model scores about −44 nats on 8×8 binarized digits (64 pixels × log 2 ≈ 44.4);
    # 20 epochs reach about −26. The threshold −30 fails if the model does not learn.
    assert summary["metrics"]["eval/elbo"] > -30.0
    assert summary["steps"] == 300


def test_importance_estimate_above_iwae_above_elbo(trained):
    run_dir, _ = trained
    model = latentvi.load(run_dir)
    torch.manual_seed(0)
    result = evaluate_run(run_dir, importance_samples=500, progress=False)

    x = _evaluation_images(model.data_config, load_data(model.data_config, "test"))
    with torch.no_grad():
        elbo = torch.stack([model.elbo(x) for _ in range(20)]).mean(0)
        iwae = torch.stack([model.iwae(x, 10) for _ in range(20)]).mean(0)
    # In expectation per example; compared on means over the 300 test examples, whose Monte
    # Carlo standard errors are below 0.02 nats here.
    assert elbo.mean() < iwae.mean() < result["log_likelihood"] + 0.05
    # eval's ELBO uses one draw per example: its Monte Carlo sd over 300 examples is ≈ 0.08 nats.
    assert math.isclose(result["elbo"], elbo.mean().item(), abs_tol=0.3)


def test_load_exposes_the_public_api(trained):
    run_dir, _ = trained
    model = latentvi.load(run_dir)
    x = torch.bernoulli(torch.full((3, 1, 8, 8), 0.3))
    q = model.encode(x)
    assert isinstance(q, torch.distributions.Distribution) and q.event_shape == (8,)
    p = model.decode(q.sample())
    assert isinstance(p, torch.distributions.Distribution) and p.log_prob(x).shape == (3,)
    assert model.prior.event_shape == (8,)
    assert model.elbo(x).shape == (3,)
    assert model.log_likelihood(x, importance_samples=10).shape == (3,)
    assert model.sample(4).shape == (4, 1, 8, 8)


def test_corrupted_or_truncated_checkpoint_gives_a_clear_error(trained, tmp_path):
    run_dir, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    weights = next((copy / "checkpoints").glob("step-*/model.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        latentvi.load(copy)
    (copy / "run.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"run\.json"):
        latentvi.load(copy)


def test_loading_runs_no_pickle(trained, monkeypatch):
    import pickle

    run_dir, _ = trained

    def refuse(*args, **kwargs):
        raise AssertionError("pickle/torch.load used while loading a run")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert latentvi.load(run_dir).sample(1).shape == (1, 1, 8, 8)
