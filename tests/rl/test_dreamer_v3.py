"""DreamerV3's robustness options in Dreamer and its world model (issue 23): KL balancing with free
bits by hand, unimix categorical latents at V3's size, return normalization, the two-hot critic
and reward head, zero-initialized heads, the slow critic as regularizer or target, the diagnosis
metrics and the v1/v3 presets."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from latentvi.bounds import balanced_kl
from latentvi.jobs.world_model import WorldModelRunConfig
from latentvi.models.ssm import RSSMConfig, WorldModel
from latentvi.presets import resolve
from latentvi.rl.dreamer import DreamerAgent, DreamerConfig
from latentvi.rl.planet import PlanetConfig
from latentvi.rl.slac import SlacConfig
from latentvi.rl.world_model_agent import ModelTrainingConfig
from latentvi.scaling import BINS

TYPES = (WorldModelRunConfig, RSSMConfig, ModelTrainingConfig, PlanetConfig, DreamerConfig,
         SlacConfig)  # fmt: skip
V3_KL = {"kl_balance": 5 / 6, "kl_scale": 0.6, "free_nats": 1.0}


def _model_config(**overrides) -> RSSMConfig:
    values = {"action_dim": 1, "obs_shape": (1, 16, 16), "deter_dim": 16, "stoch_dim": 4,
              "hidden": 16, "channels": (4, 8), **overrides}  # fmt: skip
    return RSSMConfig(**values)


def _agent(model=None, **dreamer) -> DreamerAgent:
    torch.manual_seed(0)
    config = DreamerConfig(imag_horizon=4, actor_hidden=(16,), **dreamer)
    return DreamerAgent(model or _model_config(), ModelTrainingConfig(), config)


def _posterior(agent, seed=1):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randint(0, 256, (6, 3, 1, 16, 16), dtype=torch.uint8, generator=g)
    with torch.no_grad():
        return agent.model.observe(obs, torch.zeros(6, 3, 1)).detach()


def _losses(agent, posterior, seed=2):
    torch.manual_seed(seed)  # the same imagined rollouts for every agent built from seed 0
    return agent.behaviour_losses(posterior)


# ------------------------------------------------------------------------------- world model


def test_v3_kl_weights_and_free_bits_by_hand():
    """V3: 0.5·max(1, KL(sg(q)‖p)) + 0.1·max(1, KL(q‖sg(p))) is kl_scale 0.6 × balance α = 5/6:
    the value, and which side gets which gradient (none below 1 nat)."""
    dynamics = torch.tensor([0.4, 1.0 + 1e-3, 3.0], dtype=torch.float64, requires_grad=True)
    representation = torch.tensor([0.4, 1.0 + 1e-3, 3.0], dtype=torch.float64, requires_grad=True)
    loss = V3_KL["kl_scale"] * balanced_kl(dynamics, representation, 5 / 6, 1.0)
    torch.testing.assert_close(loss, torch.tensor([0.6, 0.6 * 1.001, 1.8], dtype=torch.float64))
    loss.sum().backward()
    torch.testing.assert_close(dynamics.grad, torch.tensor([0.0, 0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(representation.grad, torch.tensor([0.0, 0.1, 0.1]).double())


def test_v3_kl_trains_the_prior_with_half_the_plain_gradient():
    """In the model: with every step's KL above the 1 free nat, the prior head (which enters only
    through p, hence only through the dynamics part) gets 0.5 × the gradient of the plain KL."""
    g = torch.Generator().manual_seed(1)
    obs = torch.randint(0, 256, (4, 3, 1, 16, 16), dtype=torch.uint8, generator=g)
    actions, rewards = torch.randn(4, 3, 1, generator=g), torch.randn(4, 3, generator=g)
    gradients = []
    for kl in ({"free_nats": 0.0}, V3_KL):
        torch.manual_seed(0)
        model = WorldModel(_model_config(recon_scale=0.0, reward_scale=0.0, **kl)).double()
        with torch.no_grad():  # a posterior far from the prior: every KL well above 1 nat
            model.rssm.posterior_head[-1].bias[:4].fill_(3.0)
        torch.manual_seed(5)
        loss, _, _ = model.loss(obs, actions.double(), rewards.double())
        loss.backward()
        gradients.append(model.rssm.prior_head[-1].weight.grad.clone())
        steps = model.step_terms(obs, actions.double(), rewards.double())[0]["kl"]
        assert steps.min() > 1.0
    torch.testing.assert_close(gradients[1], 0.5 * gradients[0], rtol=1e-9, atol=1e-12)


def test_unimix_categorical_latents_at_v3_size():
    """32 categoricals of 32 classes with 1% uniform mixing: every probability ≥ 0.01/32 even
    for extreme logits, samples one-hot, and straight-through gradients reach the prior head."""
    torch.manual_seed(0)
    model = WorldModel(_model_config(stoch_dim=32, classes=32, unimix=0.01)).double()
    rssm = model.rssm
    with torch.no_grad():
        rssm.prior_head[-1].bias.zero_()[::32] = 60.0  # class 0 of each variable: p ≈ 1 unmixed
    state, p = rssm.prior(rssm.initial(5), torch.zeros(5, 1, dtype=torch.float64))
    probs = p.base_dist.probs
    assert probs.shape == (5, 32, 32)
    assert probs.min().item() >= 0.01 / 32 * (1 - 1e-9)
    assert probs.min().item() == pytest.approx(0.01 / 32, rel=1e-6)  # the floor is reached
    torch.testing.assert_close(probs.sum(-1), torch.ones(5, 32, dtype=torch.float64))
    sample = state.stoch.reshape(5, 32, 32)
    assert set(sample.unique().tolist()) == {0.0, 1.0}
    assert (sample.sum(-1) == 1).all()
    weights = torch.randn(5, 32 * 32, dtype=torch.float64)
    (weights * state.stoch).sum().backward()
    assert rssm.prior_head[-1].weight.grad.abs().sum() > 0


def test_two_hot_reward_head_zero_initialized():
    torch.manual_seed(0)
    model = WorldModel(_model_config(reward_twohot=True, zero_init_reward=True))
    assert model.reward_head[-1].out_features == BINS
    reward = model.reward(torch.randn(7, model.feature_dim))
    assert reward.mean.shape == (7,) and reward.mean.abs().max().item() < 1e-6
    g = torch.Generator().manual_seed(1)
    obs = torch.randint(0, 256, (4, 2, 1, 16, 16), dtype=torch.uint8, generator=g)
    loss, metrics, _ = model.loss(obs, torch.zeros(4, 2, 1), 100 * torch.randn(4, 2, generator=g))
    loss.backward()  # the zero layer still learns: its gradient is not zero
    assert model.reward_head[-1].weight.grad.abs().sum() > 0
    # cross-entropy of uniform buckets against any two-hot target is log K
    assert metrics["loss/reward"] == pytest.approx(torch.log(torch.tensor(255.0)).item())


# ------------------------------------------------------------------------------------ Dreamer


def test_v1_agent_logs_the_diagnosis_without_a_normalizer():
    agent = _agent()
    _, _, metrics = _losses(agent, _posterior(agent))
    for key in ("critic_value", "lambda_return", "lambda_return_p05", "lambda_return_p95",
                "actor_entropy", "action_saturation"):  # fmt: skip
        assert f"train/{key}" in metrics, key
    assert metrics["train/lambda_return_p05"] <= metrics["train/lambda_return"]
    assert metrics["train/lambda_return"] <= metrics["train/lambda_return_p95"]
    assert 0.0 <= metrics["train/action_saturation"] <= 1.0
    assert "train/return_scale" not in metrics
    assert not any("return_normalizer" in name for name in agent.state_dict())


def test_action_saturation_counts_actions_at_the_bounds():
    agent = _agent()
    with torch.no_grad():  # a policy at its bounds: tanh(±40) rounds to ±1
        agent.actor.body[-1].bias.copy_(torch.tensor([40.0, -15.0]))
    _, _, metrics = _losses(agent, _posterior(agent))
    assert metrics["train/action_saturation"] == 1.0


def test_return_normalization_divides_the_actor_objective_by_the_scale():
    """With decay 0 the scale is max(1, Per95 − Per5) of this batch: the normalized actor loss ×
    the scale is the plain one (entropy off), on the same imagined rollouts."""
    plain, normed = _agent(), _agent(return_norm=True, return_norm_decay=0.0)
    for agent in (plain, normed):
        with torch.no_grad():  # rewards large enough that the scale is above the floor of 1
            agent.model.reward_head[-1].weight.mul_(300.0)
    posterior = _posterior(plain)
    loss, _, metrics = _losses(plain, posterior)
    normed_loss, _, normed_metrics = _losses(normed, posterior)
    spread = metrics["train/lambda_return_p95"] - metrics["train/lambda_return_p05"]
    assert spread > 2.0
    assert normed_metrics["train/return_scale"] == pytest.approx(spread, rel=1e-5)
    assert normed_loss.item() * spread == pytest.approx(loss.item(), rel=1e-4)
    assert normed.state_dict()["return_normalizer.high"] > 0  # the buffers move and are saved
    # below the floor nothing changes: a fresh agent's returns are small
    small, small_normed = _agent(), _agent(return_norm=True, return_norm_decay=0.0)
    assert _losses(small, posterior)[0].item() == _losses(small_normed, posterior)[0].item()


def test_two_hot_critic_is_zero_initialized_and_learns():
    agent = _agent(critic_twohot=True, zero_init_critic=True)
    assert agent.critic[-1].out_features == BINS
    posterior = _posterior(agent)
    _, critic_loss, metrics = _losses(agent, posterior)
    assert abs(metrics["train/critic_value"]) < 1e-6  # uniform buckets predict 0
    # the cross-entropy of uniform buckets is log K for any target, weighted by γ^t
    mean_weight = sum(DreamerConfig().discount ** t for t in range(4)) / 4
    expected = torch.log(torch.tensor(255.0)).item() * mean_weight
    assert critic_loss.item() == pytest.approx(expected, rel=1e-5)
    critic_loss.backward()
    assert agent.critic[-1].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in agent.actor.parameters())


@pytest.mark.parametrize("target", [True, False])
def test_slow_critic_is_the_bootstrap_target_only_when_asked(target):
    """With slow_critic_target the λ-returns use the slow critic's values (V1/V2), without it the
    critic's own (V3): shifting one network's output moves the returns only if it is used."""
    shifted = {}
    for which in ("slow_critic", "critic"):
        agent = _agent(slow_critic_target=target)
        posterior = _posterior(agent)
        before = _losses(agent, posterior)[2]["train/lambda_return"]
        with torch.no_grad():
            getattr(agent, which)[-1].bias.add_(10.0)
        shifted[which] = _losses(agent, posterior)[2]["train/lambda_return"] - before
    used, unused = ("slow_critic", "critic") if target else ("critic", "slow_critic")
    assert shifted[used] > 1.0 and shifted[unused] == 0.0


def test_slow_critic_regularizer_by_hand():
    """Squared-error critic, slow critic shifted by c: the regularizer adds
    ``reg · ½ · c² · mean_t(γ^t)`` exactly (returns bootstrap from the critic, so they do not
    move)."""
    c, reg, gamma = 0.7, 2.0, DreamerConfig().discount
    plain = _agent(slow_critic_target=False)
    regularized = _agent(slow_critic_target=False, slow_critic_reg=reg)
    for agent in (plain, regularized):
        with torch.no_grad():
            agent.slow_critic[-1].bias.add_(c)
    posterior = _posterior(plain)
    base = _losses(plain, posterior)[1].item()
    with_reg = _losses(regularized, posterior)[1].item()
    mean_weight = sum(gamma**t for t in range(4)) / 4
    assert with_reg - base == pytest.approx(reg * 0.5 * c**2 * mean_weight, rel=1e-4)


def test_v3_update_runs_and_checkpoints_its_normalizer():
    preset = resolve("world-model", "v3-debug", TYPES, agent="dreamer")
    _, model, training, _, dreamer, _ = preset
    model = dataclasses.replace(model, action_dim=1, obs_shape=(1, 16, 16), channels=(4, 8))
    torch.manual_seed(0)
    agent = DreamerAgent(model, dataclasses.replace(training, batch_size=3, chunk_length=6),
                         dreamer)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    batch = {"obs": torch.randint(0, 256, (6, 3, 1, 16, 16), dtype=torch.uint8, generator=g),
             "action": torch.rand(6, 3, 1, generator=g) * 2 - 1,
             "reward": -10 * torch.rand(6, 3, generator=g)}  # fmt: skip
    for _ in range(2):
        metrics = agent.update(batch)
    assert metrics["train/return_scale"] >= 1.0
    assert {"return_normalizer.low", "return_normalizer.high"} <= set(agent.state_dict())
    slow = dict(agent.slow_critic.named_parameters())
    for name, parameter in agent.critic.named_parameters():  # the slow critic trails the critic
        assert not torch.equal(slow[name], parameter)


# ------------------------------------------------------------------------------------ presets


def test_v1_preset_is_the_default_and_v3_sets_v3s_options():
    assert resolve("world-model", "v1", TYPES, agent="dreamer") == resolve(
        "world-model", "default", TYPES, agent="dreamer"
    )
    _, model, _, _, dreamer, _ = resolve("world-model", "v3", TYPES, agent="dreamer")
    assert (model.stoch_dim, model.classes, model.unimix, model.free_nats) == (32, 32, 0.01, 1.0)
    assert model.kl_scale * model.kl_balance == pytest.approx(0.5)
    assert model.kl_scale * (1 - model.kl_balance) == pytest.approx(0.1)
    assert model.reward_twohot and model.zero_init_reward
    assert dreamer.return_norm and dreamer.critic_twohot and dreamer.zero_init_critic
    assert dreamer.slow_critic_tau == 0.02 and not dreamer.slow_critic_target
    assert dreamer.slow_critic_reg == 1.0 and dreamer.actor_entropy == 3e-4
    # the Dreamer part is Dreamer's only: PlaNet under v3 gets V3's world model alone
    _, planet_model, *_, planet_dreamer, _ = resolve("world-model", "v3", TYPES, agent="planet")
    assert planet_model == model and not planet_dreamer.return_norm
    run, debug_model, *_ = resolve("world-model", "v3-debug", TYPES, agent="dreamer")
    assert run.steps == resolve("world-model", "debug", TYPES)[0].steps
    assert (debug_model.stoch_dim, debug_model.classes) == (8, 8)


# ------------------------------------------------------------------- collapse under large returns

V1_BEHAVIOUR = {"actor_entropy": 1.0, "actor_lr": 2e-4, "critic_lr": 2e-4}  # the default preset's
V3_BEHAVIOUR = {"actor_lr": 2e-4, "critic_lr": 2e-4, "return_norm": True, "critic_twohot": True,
                "zero_init_critic": True, "slow_critic_tau": 0.02, "slow_critic_target": False,
                "slow_critic_reg": 1.0, "actor_entropy": 3e-4}  # fmt: skip


def _entropy_after_training(behaviour: dict, reward_scale: float, updates: int = 200) -> float:
    """Train only the actor and critic for ``updates`` steps on imagined rollouts of a fixed
    (untrained, seed 1) world model whose reward head is scaled by ``reward_scale``; return the
    actor's entropy estimate at the end."""
    torch.manual_seed(1)
    config = DreamerConfig(imag_horizon=8, actor_hidden=(32, 32), **behaviour)
    agent = DreamerAgent(_model_config(), ModelTrainingConfig(), config)
    with torch.no_grad():
        agent.model.reward_head[-1].weight.mul_(reward_scale)
        agent.model.reward_head[-1].bias.fill_(-reward_scale)
    g = torch.Generator().manual_seed(1)
    obs = torch.randint(0, 256, (8, 4, 1, 16, 16), dtype=torch.uint8, generator=g)
    with torch.no_grad():
        posterior = agent.model.observe(obs, torch.rand(8, 4, 1, generator=g) * 2 - 1).detach()
    for _ in range(updates):
        metrics = agent.learn_behaviour(posterior)
    return metrics["train/actor_entropy"]


def test_return_normalization_keeps_the_actor_from_collapsing_under_large_returns():
    """The default preset's actor (entropy bonus 1, no normalization) keeps its entropy when the
    λ-returns are a few units, and collapses it (0.6 → below 0.2 nats in 200 updates) when the
    rewards are 100× larger — λ-returns of about −400, Pendulum's size — because the bonus no
    longer weighs against the return. Return normalization alone, and the V3 behaviour options
    together, keep it at the same reward scale. (A fixed, untrained world model and one seed, in
    ~20 s; not the pixel Pendulum collapse of issue 23, whose cause the long runs diagnose.)"""
    assert _entropy_after_training(V1_BEHAVIOUR, 1.0) > 0.5
    assert _entropy_after_training(V1_BEHAVIOUR, 100.0) < 0.2
    assert _entropy_after_training({**V1_BEHAVIOUR, "return_norm": True}, 100.0) > 0.5
    assert _entropy_after_training(V3_BEHAVIOUR, 100.0) > 0.5
