"""Sizes that cannot fit are refused in one line before anything is allocated or written."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentvi import cli
from latentvi.data.replay import ReplayBuffer
from latentvi.memory import (
    available_memory,
    format_bytes,
    meta_build,
    mlp_parameters,
    network_bytes,
    require_memory,
)


def run_cli(argv, capsys):
    code = cli.main(argv)
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_available_memory_is_read_from_the_machine():
    available = available_memory()
    assert available is not None and 10**7 < available < 10**15


def test_estimates_and_refusal():
    assert mlp_parameters([3, 4, 2]) == (3 + 1) * 4 + (4 + 1) * 2
    assert format_bytes(1.5e12) == "1.5 TB"
    require_memory(1000, "a tiny thing", ("size",), "use less")  # fits: nothing happens
    with pytest.raises(ValueError, match=r"^size too large: a huge thing needs at least"):
        require_memory(10**20, "a huge thing", ("size",), "use less")


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "vae", "--dataset", "digits", "--latent-dim", "100000000000"],
        ["train", "vae", "--dataset", "digits", "--hidden", "100000000,100000000"],
        ["vi", "--num-points", "1000000000000"],
        ["rl", "latent-q", "--env", "latentvi/PixelChain-v0", "--variant", "vae", "--preset",
         "debug", "--buffer-size", "100000000000", "--steps", "10"],
    ],
)  # fmt: skip
def test_sizes_that_cannot_fit_are_one_line_and_write_nothing(argv, tmp_path, capsys):
    out = tmp_path / "run"
    status, err = run_cli([*argv, "--out", str(out)], capsys)
    assert status == 2 and len(err) == 1, err
    assert "too large" in err[0] and "of memory" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_a_replay_buffer_that_cannot_fit_is_refused_before_allocating():
    with pytest.raises(ValueError, match="replay buffer of 10000000000000 frames"):
        ReplayBuffer(10**13, (3, 64, 64))


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["world-model", "train", "--agent", "dreamer", "--deter-dim", "1000000"], "--deter-dim"),
        (["world-model", "train", "--agent", "planet", "--hidden", "1000000000000"], "--hidden"),
        (["world-model", "train", "--agent", "slac", "--steps", "1000000000"], "--steps"),
        (["world-model", "train", "--agent", "e2c", "--hidden", "1000000,1000000"], "--hidden"),
        (["world-model", "train", "--agent", "e2c", "--transitions", "100000000",
          "--image-size", "256"], "--transitions"),
        (["rl", "latent-q", "--env", "latentvi/PixelChain-v0", "--variant", "vae",
          "--hidden", "1000000,1000000", "--steps", "10"], "--hidden"),
    ],
)  # fmt: skip
def test_world_models_that_cannot_fit_name_the_option_before_writing(
    argv, option, tmp_path, capsys
):
    status, err = run_cli([*argv, "--preset", "debug", "--out", str(tmp_path / "run")], capsys)
    assert status == 2 and len(err) == 1, err
    assert f"{option}" in err[0].split(" too large")[0]
    assert "of memory" in err[0] or "cannot be built (Storage size calculation overflowed" in err[0]
    assert "use smaller sizes" in err[0]
    assert list(tmp_path.iterdir()) == []


def _allocated_after_a_step(module, optimizers) -> int:
    """Bytes of the distinct tensors a training step leaves: weights, buffers, gradients and
    the optimizers' state (a real backward pass and Adam step over every trainable weight)."""
    trainable = [p for p in module.parameters() if p.requires_grad]
    torch.stack([p.float().square().mean() for p in trainable]).sum().backward()
    for optimizer in optimizers:
        optimizer.step()
    tensors = [*module.parameters(), *module.buffers()]
    tensors += [p.grad for p in trainable if p.grad is not None]
    for optimizer in optimizers:
        tensors += [v for state in optimizer.state.values() for v in state.values()
                    if torch.is_tensor(v)]  # fmt: skip
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def _networks():
    from latentvi.jobs.world_model import AGENTS
    from latentvi.models.e2c import E2C, E2CConfig
    from latentvi.models.ssm import RSSMConfig
    from latentvi.rl.latent_q import LatentQAgent, LatentQConfig
    from latentvi.rl.world_model_agent import ModelTrainingConfig

    model = RSSMConfig(action_dim=2, obs_shape=(3, 32, 32), deter_dim=64, stoch_dim=8,
                       hidden=64, channels=(8, 16))  # fmt: skip
    for name, (config, factory) in AGENTS.items():
        yield name, lambda f=factory, c=config: f(model, ModelTrainingConfig(), c())
    yield "e2c", lambda: E2C((2, 32, 32), 1, E2CConfig(hidden=(64, 64)))
    import gymnasium as gym

    pixels = gym.spaces.Box(0, 255, (2, 16, 16), np.uint8)
    for variant, actions in (("vae", gym.spaces.Discrete(3)),
                             ("pixels", gym.spaces.Box(-1.0, 1.0, (2,), np.float32))):  # fmt: skip
        config = LatentQConfig(variant=variant, latent_dim=8, channels=(8, 16), feature_dim=16,
                               hidden=(32, 32))  # fmt: skip
        yield f"latent-q {variant}", lambda c=config, a=actions: LatentQAgent(c, pixels, a)


@pytest.mark.parametrize(
    ("name", "build"), list(_networks()), ids=lambda v: v if isinstance(v, str) else ""
)
def test_network_estimates_match_the_tensors_a_training_step_allocates(name, build):
    """The estimate (meta device, nothing allocated) is within 1% of what a real step leaves
    (weights, buffers, gradients, Adam's moments and step counts)."""
    estimate = network_bytes(meta_build(build))
    torch.manual_seed(0)
    network = build()
    optimizers = list(getattr(network, "optimizers", {}).values()) or [
        torch.optim.Adam(network.parameters())
    ]
    measured = _allocated_after_a_step(network, optimizers)
    assert abs(estimate - measured) <= 0.01 * measured, (name, estimate, measured)
