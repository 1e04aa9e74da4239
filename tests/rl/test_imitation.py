"""Imitation policies: the CVAE policy uses its latent to cover both modes where BC cannot."""

import numpy as np
import pytest
import torch

from latentvi.envs.demos import DemoConfig, collect_demonstrations
from latentvi.jobs.imitation import train_policy
from latentvi.rl.imitation import (
    PolicyConfig,
    build_policy_model,
    evaluate_policy,
    make_controller,
)


@pytest.fixture(scope="module")
def demos():
    return collect_demonstrations("obstacle", DemoConfig(demos=300, demo_noise=0.1))


def _evaluate(demos, **overrides):
    config = PolicyConfig(**overrides)
    model, _ = train_policy(demos, config)
    metrics, _ = evaluate_policy("obstacle", make_controller(model, config, "obstacle"), 60)
    return metrics


def test_cvae_policy_uses_both_modes_and_bc_does_not(demos):
    """A short fixed-seed run (3000 steps, 60 fresh episodes). The CVAE policy succeeds in ≥ 90%
    of episodes and passes on each side in ≥ 30%; behaviour cloning (the CVAE's decoder without
    a latent) cannot do both: it averages the modes into the obstacle or settles on one side.
    If the CVAE ignored z it would be that same unimodal regressor, and fail the same way."""
    cvae = _evaluate(demos, policy="cvae", steps=3000, seed=0)
    assert cvae["success"] >= 0.9, cvae
    assert min(cvae["modes"].values()) >= 0.3, cvae
    bc = _evaluate(demos, policy="bc", steps=1000, seed=0)
    assert not (bc["success"] >= 0.9 and min(bc["modes"].values()) >= 0.3), bc


@pytest.mark.parametrize("policy", ["bc", "cvae", "chunk-cvae", "lmp"])
def test_every_policy_trains_and_acts(demos, policy):
    """Each model's loss is finite and its controller returns actions of the right shape."""
    config = PolicyConfig(policy=policy, steps=5, chunk=4, window=4)
    model, tensors = build_policy_model(demos, config)
    loss, metrics = model.loss(tuple(t[:16] for t in tensors))
    assert loss.shape == () and torch.isfinite(loss)
    model, _ = train_policy(demos, config)
    metrics, runs = evaluate_policy("obstacle", make_controller(model, config, "obstacle"), 2)
    assert 0 <= metrics["success"] <= 1 and len(runs) == 2
    assert runs[0].actions.shape[1] == 2


class _ConstantChunks:
    """A stand-in chunk model: the chunk predicted at the t-th call is (t + i) for step i."""

    latent_dim = 1

    def __init__(self, k):
        self.k, self.calls, self.y_dim = k, 0, 2 * k

    def prior(self, s):
        return torch.distributions.Normal(torch.zeros(1), torch.ones(1))

    def decode(self, s, z):
        values = self.calls + torch.arange(self.k, dtype=torch.float32)
        self.calls += 1
        return torch.distributions.Normal(values[:, None].expand(self.k, 2).flatten(), 1.0)


class _DisagreeingChunks(_ConstantChunks):
    def decode(self, s, z):
        self.calls += 1
        return torch.distributions.Normal(torch.full((self.y_dim,), 10.0 * self.calls), 1.0)


def test_temporal_ensembling_weights_the_oldest_most():
    """At step t ≥ k−1, k chunks predict the action; chunk c (made at step c) says t for all of
    them (c + (t − c)), so any weighted mean is t; the open-loop variant reuses one chunk."""
    k, m = 3, 0.5
    config = PolicyConfig(policy="chunk-cvae", chunk=k, temporal_ensemble=True, ensemble_decay=m)
    controller = make_controller(_ConstantChunks(k), config, "obstacle")
    controller.reset(np.zeros(2))
    actions = [controller.act(np.zeros(2))[0] for _ in range(6)]
    assert actions == pytest.approx([0, 1, 2, 3, 4, 5])
    # Predictions that disagree: chunk c predicts 10·(c + 1) for every step; weights exp(−m·i).
    controller = make_controller(_DisagreeingChunks(k), config, "obstacle")
    controller.reset(np.zeros(2))
    actions = [controller.act(np.zeros(2))[0] for _ in range(4)]
    weights = np.exp(-m * np.arange(3))  # i = 0: the oldest of the chunks made at steps 1, 2, 3
    expected = (weights * np.array([20.0, 30.0, 40.0])).sum() / weights.sum()
    assert actions[3] == pytest.approx(expected)
    open_loop = PolicyConfig(policy="chunk-cvae", chunk=k)
    controller = make_controller(_ConstantChunks(k), open_loop, "obstacle")
    controller.reset(np.zeros(2))
    actions = [controller.act(np.zeros(2))[0] for _ in range(6)]
    assert actions == pytest.approx([0, 1, 2, 1, 2, 3])  # chunks made at steps 0 and 3


def test_bad_policy_names_are_named():
    with pytest.raises(ValueError, match="policy = 'gail'"):
        PolicyConfig(policy="gail")
    with pytest.raises(ValueError, match="chunk"):
        PolicyConfig(chunk=0)


def test_latent_plan_loss_is_the_window_elbo(demos):
    """The latent-plan loss is −E_q[Σ_t log π(a_t|s_t, z, g)] + β KL(q(z|τ) ‖ p(z|s_0, g)): its KL
    term equals the closed-form KL against the state- and goal-conditioned prior, and its
    reconstruction term the Monte Carlo mean of the window's action log-likelihood."""
    config = PolicyConfig(policy="lmp", window=4, beta=3.0)
    torch.manual_seed(0)
    model, (states, actions, goals) = build_policy_model(demos, config)
    batch = (states[:32], actions[:32], goals[:32])
    torch.manual_seed(1)
    loss, metrics = model.loss(batch)
    q, prior = model.encode(*batch), model.prior(states[:32, 0], goals[:32])
    expected_kl = torch.distributions.kl_divergence(q, prior).mean()
    assert metrics["loss/kl"].item() == pytest.approx(expected_kl.item(), rel=1e-5)
    torch.manual_seed(1)
    z = q.rsample()
    mean = model.action_mean(
        states[:32], z[:, None].expand(-1, 4, -1), goals[:32, None].expand(-1, 4, -1)
    )
    log_likelihood = model.likelihood_head(mean).log_prob(actions[:32]).mean()
    assert metrics["loss/recon"].item() == pytest.approx(-log_likelihood.item(), rel=1e-5)
    assert loss.item() == pytest.approx(
        metrics["loss/recon"].item() + 3.0 * expected_kl.item(), rel=1e-5
    )


@pytest.mark.slow
def test_cvae_policy_covers_three_passages():
    """The benchmark's claim at full length (6000 steps, 200 fresh episodes, seed 0): on the
    three-passage task the CVAE policy succeeds in ≥ 90% and takes every gap in ≥ 15%."""
    demos = collect_demonstrations("passages", DemoConfig())
    config = PolicyConfig(policy="cvae")
    model, _ = train_policy(demos, config)
    metrics, _ = evaluate_policy("passages", make_controller(model, config, "passages"), 200)
    assert metrics["success"] >= 0.9 and min(metrics["modes"].values()) >= 0.15, metrics
