"""Agents: closed-form targets, the squashed policy's density, which loss trains which weights."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from latentvi.data.replay import ReplayBatch
from latentvi.rl.dqn import double_q_target, epsilon_at
from latentvi.rl.latent_q import LatentQAgent, LatentQConfig
from latentvi.rl.sac import TanhGaussianPolicy, polyak_update

SMALL = {"latent_dim": 4, "channels": (8, 8), "hidden": (32,), "feature_dim": 8, "batch_size": 16}
PIXELS = gym.spaces.Box(0, 255, (2, 16, 16), np.uint8)  # two stacked 16×16 grayscale frames
DISCRETE = gym.spaces.Discrete(3)
CONTINUOUS = gym.spaces.Box(-2.0, 2.0, (2,), np.float32)


def _batch(action_space, n=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    obs = torch.randint(0, 256, (n, *PIXELS.shape), generator=generator, dtype=torch.uint8)
    next_obs = torch.randint(0, 256, (n, *PIXELS.shape), generator=generator, dtype=torch.uint8)
    if isinstance(action_space, gym.spaces.Discrete):
        action = torch.randint(0, action_space.n, (n,), generator=generator)
    else:
        action = torch.rand(n, action_space.shape[0], generator=generator) * 4 - 2
    reward = torch.randn(n, generator=generator)
    terminated = (torch.rand(n, generator=generator) < 0.3).float()
    return ReplayBatch(obs, action, reward, next_obs, terminated)


def test_double_q_target_picks_the_action_online_and_values_it_with_the_target():
    online = torch.tensor([[1.0, 3.0], [2.0, 0.0]])
    target = torch.tensor([[10.0, 20.0], [30.0, 40.0]])
    reward, terminated = torch.tensor([1.0, -1.0]), torch.tensor([0.0, 1.0])
    y = double_q_target(online, target, reward, terminated, discount=0.5)
    # Row 0: argmax online = 1, target value 20 → 1 + 0.5·20; row 1 is terminal → its reward.
    assert torch.allclose(y, torch.tensor([11.0, -1.0]))


def test_epsilon_decays_linearly_then_stays():
    assert epsilon_at(0, 1.0, 0.1, 100) == 1.0
    assert epsilon_at(50, 1.0, 0.1, 100) == pytest.approx(0.55)
    assert epsilon_at(1000, 1.0, 0.1, 100) == pytest.approx(0.1)


def test_squashed_gaussian_log_density_is_the_change_of_variables():
    torch.manual_seed(0)
    low, high = torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 1.0])
    policy = TanhGaussianPolicy(5, low, high, hidden=(16,)).double()
    features = torch.randn(64, 5, dtype=torch.float64)
    pi = policy(features)
    action = pi.rsample()
    assert bool(((action > low) & (action < high)).all())
    # a = c + h·tanh(u): log π(a) = log N(u) − Σ log(h·(1 − tanh² u)).
    base = pi.base_dist
    u = torch.atanh(((action - policy.centre) / policy.half_range).clamp(-1 + 1e-12, 1 - 1e-12))
    expected = base.log_prob(u) - torch.log(policy.half_range * (1 - torch.tanh(u) ** 2)).sum(-1)
    assert torch.allclose(pi.log_prob(action), expected, atol=1e-6)
    assert torch.allclose(
        policy.mode(features), policy.centre + policy.half_range * torch.tanh(base.mean)
    )


def test_log_density_of_a_saturated_sample_is_finite_and_exact():
    # A policy mean far out on tanh's flat tail: float32 rounds the action to the bound, where
    # inverting the squash gives atanh(±1) = ±∞ and a NaN log-density (a 30k-step pixel-Pendulum
    # run died of it). log_prob of the distribution's own rsample() must reuse the pre-tanh draw.
    torch.manual_seed(0)
    policy = TanhGaussianPolicy(3, torch.tensor([-2.0]), torch.tensor([2.0]), hidden=(8,))
    with torch.no_grad():
        policy.body[-1].bias[0] = 12.0  # loc ≈ 12: tanh(12) = 1 in float32
    pi = policy(torch.zeros(16, 3))
    torch.manual_seed(1)
    u = pi.base_dist.rsample()  # the pre-tanh draw of the rsample() below (same noise)
    torch.manual_seed(1)
    action = pi.rsample()
    assert bool((action == 2.0).all())  # rounded to the bound
    log_prob = pi.log_prob(action)
    # log(1 − tanh² u) = 2 (log 2 − u − softplus(−2u)), finite for any u.
    log_jacobian = 2 * (math.log(2.0) - u - torch.nn.functional.softplus(-2 * u)) + math.log(2.0)
    expected = pi.base_dist.log_prob(u) - log_jacobian.sum(-1)
    assert bool(torch.isfinite(log_prob).all())
    assert torch.allclose(log_prob, expected, atol=1e-4)
    log_prob.sum().backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in policy.parameters())


def test_polyak_update_moves_the_target_a_fraction_tau():
    source, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = target.weight.detach().clone()
    polyak_update(target, source, 0.25)
    assert torch.allclose(target.weight, 0.75 * before + 0.25 * source.weight)


def _grads(loss, parameters):
    return torch.autograd.grad(loss, parameters, allow_unused=True, retain_graph=True)


@pytest.mark.parametrize("action_space", [DISCRETE, CONTINUOUS], ids=["dqn", "sac"])
def test_vae_loss_and_q_loss_train_disjoint_parameters_by_default(action_space):
    torch.manual_seed(0)
    agent = LatentQAgent(LatentQConfig(variant="vae", **SMALL), PIXELS, action_space)
    groups = agent.parameter_groups()
    batch = _batch(action_space)
    vae_loss, _ = agent.representation_loss(batch.obs)
    q_loss = agent.q_loss(batch)
    # The VAE loss reaches every VAE parameter and no Q parameter; the Q loss the reverse.
    assert all(g is not None for g in _grads(vae_loss, groups["representation"]))
    assert all(g is None for g in _grads(vae_loss, groups["head"]))
    assert all(g is None for g in _grads(q_loss, groups["representation"]))
    assert any(g is not None and g.abs().sum() > 0 for g in _grads(q_loss, groups["head"]))
    # A whole update (VAE, critic, actor, temperature) with the VAE's learning rate at 0 leaves
    # the representation exactly as it was, while the head moves.
    for group in agent.optimizers["vae"].param_groups:
        group["lr"] = 0.0
    representation = [p.detach().clone() for p in groups["representation"]]
    head = [p.detach().clone() for p in groups["head"]]
    agent.update(batch)
    assert all(
        torch.equal(a, b) for a, b in zip(representation, groups["representation"], strict=True)
    )
    assert not all(torch.equal(a, b) for a, b in zip(head, groups["head"], strict=True))


def test_critic_norm_puts_layer_norm_in_the_critics_it_names():
    """``critic_norm``: ``sac`` (the default) in both SAC critics and their targets but not in
    DQN's Q-network, ``all`` in both, ``none`` in neither; never in SAC's actor."""
    torch.manual_seed(0)
    assert LatentQConfig().critic_norm == "sac"

    def norms(module):
        return sum(isinstance(m, torch.nn.LayerNorm) for m in module.modules())

    state = gym.spaces.Box(-1, 1, (3,), np.float32)
    for setting, in_dqn, in_sac in (("sac", 0, 1), ("all", 1, 1), ("none", 0, 0)):
        config = LatentQConfig(variant="state", critic_norm=setting, hidden=(32, 32))
        dqn = LatentQAgent(config, state, DISCRETE).head
        assert norms(dqn.q) == norms(dqn.q_target) == 2 * in_dqn
        sac = LatentQAgent(config, state, CONTINUOUS).head
        assert norms(sac.critic) == norms(sac.critic_target) == 4 * in_sac
        assert norms(sac.actor) == 0
    with pytest.raises(ValueError, match="critic_norm"):
        LatentQConfig(critic_norm="yes")


def test_finetuning_lets_the_q_loss_reach_the_encoder_but_not_the_decoder():
    torch.manual_seed(0)
    config = LatentQConfig(variant="vae", finetune_encoder=True, **SMALL)
    agent = LatentQAgent(config, PIXELS, DISCRETE)
    vae = agent.representation.vae
    q_loss = agent.q_loss(_batch(DISCRETE))
    assert all(g is not None for g in _grads(q_loss, list(vae.encoder.parameters())))
    assert all(g is None for g in _grads(q_loss, list(vae.decoder.parameters())))


def test_an_encoder_the_critic_trains_has_a_polyak_averaged_target_copy():
    for variant, options in (("pixels", {}), ("vae", {"finetune_encoder": True})):
        torch.manual_seed(0)
        config = LatentQConfig(variant=variant, **options, **SMALL)
        agent = LatentQAgent(config, PIXELS, CONTINUOUS)
        before = [p.clone() for p in agent.target_representation.parameters()]
        agent.update(_batch(CONTINUOUS))
        online = list(agent.representation.parameters())
        assert any(not torch.equal(o, b) for o, b in zip(online, before, strict=True))
        for old, target, new in zip(
            before, agent.target_representation.parameters(), online, strict=True
        ):
            torch.testing.assert_close(target, old + config.encoder_tau * (new - old))
    default = LatentQAgent(LatentQConfig(variant="vae", **SMALL), PIXELS, CONTINUOUS)
    assert not hasattr(default, "target_representation")  # the VAE loss alone moves it slowly


def test_the_pixels_variant_trains_its_conv_encoder_with_the_critic():
    torch.manual_seed(0)
    agent = LatentQAgent(LatentQConfig(variant="pixels", **SMALL), PIXELS, CONTINUOUS)
    assert agent.representation_loss(_batch(CONTINUOUS).obs) is None
    q_loss = agent.q_loss(_batch(CONTINUOUS))
    assert all(g is not None for g in _grads(q_loss, agent.parameter_groups()["representation"]))


def test_bad_combinations_raise_clear_errors():
    with pytest.raises(ValueError, match="variant = 'state' but observations are images"):
        LatentQAgent(LatentQConfig(variant="state"), PIXELS, DISCRETE)
    with pytest.raises(ValueError, match="needs image observations"):
        LatentQAgent(LatentQConfig(variant="vae"), gym.spaces.Box(-1, 1, (3,)), DISCRETE)
    with pytest.raises(ValueError, match="action space"):
        LatentQAgent(
            LatentQConfig(variant="vae", **SMALL), PIXELS, gym.spaces.MultiDiscrete([2, 2])
        )
    with pytest.raises(ValueError, match="finetune_encoder"):
        LatentQConfig(variant="pixels", finetune_encoder=True)
    with pytest.raises(ValueError, match="vae_likelihood"):
        LatentQConfig(vae_likelihood="bernoulli")
    with pytest.raises(ValueError, match="vae_center"):
        LatentQConfig(vae_likelihood="continuous-bernoulli")
    LatentQConfig(vae_likelihood="continuous-bernoulli", vae_center=False)  # valid uncentred


def _rods(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``uint8 [n, 1, size, size]``: white frames with one dark rod (3 px wide, 0.4·size long)
    from the centre at a uniformly random angle — pixel Pendulum in miniature."""
    angle = torch.rand(n, generator=generator) * 2 * torch.pi
    grid = torch.arange(size).float() + 0.5 - size / 2
    rows, cols = grid[None, :, None], grid[None, None, :]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    along, across = rows * cos + cols * sin, cols * cos - rows * sin
    rod = (along > 0) & (along < 0.4 * size) & (across.abs() < 1.5)
    return torch.where(rod, 90, 255).to(torch.uint8)[:, None]


def _reconstruction_error_ratio(center: bool) -> float:
    """Squared reconstruction error on held-out rods after 300 VAE updates, over the error of
    predicting every frame by the mean frame (1 = the VAE draws the average rod for every frame)."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    train, test = _rods(2000, 16, generator), _rods(200, 16, generator)
    config = LatentQConfig(latent_dim=4, channels=(8, 8), vae_center=center)
    agent = LatentQAgent(config, gym.spaces.Box(0, 255, (1, 16, 16), np.uint8), CONTINUOUS)
    optimizer = agent.optimizers["vae"]
    for _ in range(300):
        loss, _ = agent.representation_loss(train[torch.randint(0, 2000, (32,))])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    x = test.float() / 255
    error = (agent.reconstruct(test) - x).square().sum((1, 2, 3)).mean()
    baseline = (x.mean(0) - x).square().sum((1, 2, 3)).mean()
    return float(error / baseline)


def test_the_vae_reconstructs_a_small_object_on_a_white_background():
    # Issue 5's failure in miniature: on pixel Pendulum the VAE drew one blurred average pendulum
    # for every frame. Centred on the mean frame (the default) it follows the rod. Measured 0.29
    # (the uncentred VAE: 1.04, see the next test), so 0.5 leaves a wide margin on either side.
    assert _reconstruction_error_ratio(center=True) < 0.5


@pytest.mark.slow  # ~2 s on an idle core
def test_the_uncentred_vae_draws_the_average_frame():
    # The cause, kept as a check: uncentred, the decoder starts at 0 against a white (≈ 1)
    # background, and the first updates' σ⁻²-scaled gradient through z collapses the encoder.
    assert _reconstruction_error_ratio(center=False) > 0.9


def test_the_mean_frame_is_the_first_batch_mean_fixed_and_saved():
    torch.manual_seed(0)
    agent = LatentQAgent(LatentQConfig(variant="vae", **SMALL), PIXELS, CONTINUOUS)
    first, second = _batch(CONTINUOUS, seed=1).obs, _batch(CONTINUOUS, seed=2).obs
    agent.representation_loss(first)
    agent.representation_loss(second)
    representation = agent.representation
    assert torch.allclose(representation.mean_frame, first.float().mean(0) / 255)
    # The features and reconstructions see s − m; reconstructions come back in pixel units.
    vae = representation.vae
    centred = first.float() / 255 - representation.mean_frame
    assert torch.allclose(agent.representation(first), vae.encode(centred).mean)
    expected = vae.decode(vae.encode(centred).mean).mean + representation.mean_frame
    assert torch.allclose(agent.reconstruct(first), expected)
    # Saved with the weights: a fresh agent loaded from the state dict gives the same features.
    clone = LatentQAgent(LatentQConfig(variant="vae", **SMALL), PIXELS, CONTINUOUS)
    clone.load_state_dict(agent.state_dict())
    assert torch.equal(clone.representation(second), agent.representation(second))
