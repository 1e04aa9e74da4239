"""SAC's three losses against a hand computation on a fixed batch (issue 24).

The expected values are written out with explicit tensor arithmetic in float64 — the networks'
forward passes from their weight matrices, the squashed Gaussian's log-density from the
change-of-variables formula — and share nothing with :mod:`latentvi.rl.sac` but the weights and
the standard normal draws (the same generator state, replayed).
"""

from __future__ import annotations

import math

import torch

from latentvi.rl.sac import SAC

B, F, A = 6, 3, 2
LOW, HIGH = torch.tensor([-2.0, -0.5]), torch.tensor([2.0, 1.5])
DISCOUNT, ALPHA = 0.9, 0.3


def mlp(state: dict[str, torch.Tensor], prefix: str, x: torch.Tensor) -> torch.Tensor:
    """ReLU MLP from its weights: the Linear layers of ``prefix`` in order (indices 0, 2, 4)."""
    indices = sorted({int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix)})
    for n, index in enumerate(indices):
        x = x @ state[f"{prefix}{index}.weight"].T + state[f"{prefix}{index}.bias"]
        if n < len(indices) - 1:
            x = torch.clamp(x, min=0.0)
    return x


def squashed_sample(state, features, noise):
    """Action ``c + h·tanh(μ + σ ε)`` and its log-density in action units, by hand."""
    out = mlp(state, "actor.body.", features)
    mu, raw = out[:, :A], out[:, A:]
    sigma = torch.log1p(torch.exp(raw.clamp(-20.0, 5.0))) + 1e-4  # softplus + min scale
    u = mu + sigma * noise
    centre, half = (HIGH + LOW).double() / 2, (HIGH - LOW).double() / 2
    action = centre + half * torch.tanh(u)
    gaussian = -0.5 * noise**2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi)
    jacobian = torch.log(1 - torch.tanh(u) ** 2) + torch.log(half)  # |d action / d u|
    return action, (gaussian - jacobian).sum(-1)


def twin_q(state, prefix, features, action):
    inputs = torch.cat([features, action], -1)
    q1 = mlp(state, f"{prefix}.q1.", inputs).squeeze(-1)
    q2 = mlp(state, f"{prefix}.q2.", inputs).squeeze(-1)
    return q1, q2


def make_sac() -> tuple[SAC, dict]:
    torch.manual_seed(0)
    sac = SAC(F, LOW, HIGH, (8, 8), discount=DISCOUNT, init_temperature=ALPHA).double()
    with torch.no_grad():  # targets apart from the critics, so a swap of the two would show
        for parameter in sac.critic_target.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    state = {k: v.detach().clone() for k, v in sac.state_dict().items()}
    generator = torch.Generator().manual_seed(1)
    batch = {
        "features": torch.randn(B, F, generator=generator, dtype=torch.float64),
        "action": LOW.double() + (HIGH - LOW).double() * torch.rand(B, A, generator=generator,
                                                                    dtype=torch.float64),
        "reward": torch.randn(B, generator=generator, dtype=torch.float64),
        "next_features": torch.randn(B, F, generator=generator, dtype=torch.float64),
        "terminated": torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0, 0.0], dtype=torch.float64),
    }  # fmt: skip
    return sac, state, batch


def test_the_critic_loss_is_the_soft_td_error_against_the_min_of_the_target_critics():
    sac, state, b = make_sac()
    torch.manual_seed(7)
    loss, metrics = sac.critic_loss(
        b["features"], b["action"], b["reward"], b["next_features"], b["next_features"],
        b["terminated"],
    )  # fmt: skip
    torch.manual_seed(7)
    noise = torch.randn(B, A, dtype=torch.float64)
    next_action, next_log_prob = squashed_sample(state, b["next_features"], noise)
    target1, target2 = twin_q(state, "critic_target", b["next_features"], next_action)
    alpha = state["log_alpha"].exp()  # 0.3 up to float32 rounding of log α
    soft_value = torch.minimum(target1, target2) - alpha * next_log_prob
    y = b["reward"] + DISCOUNT * (1 - b["terminated"]) * soft_value
    q1, q2 = twin_q(state, "critic", b["features"], b["action"])
    expected = ((q1 - y) ** 2).mean() + ((q2 - y) ** 2).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(metrics["train/q"], q1.mean(), rtol=1e-12, atol=1e-12)
    # the terminated transitions' targets are their rewards alone
    done = b["terminated"].bool()
    torch.testing.assert_close(y[done], b["reward"][done])
    # the loss's gradient reaches the critics only, not the targets, the actor or α
    loss.backward()
    assert all(p.grad is not None for p in sac.critic.parameters())
    assert all(p.grad is None for p in sac.actor.parameters())
    assert sac.log_alpha.grad is None


def test_the_actor_and_temperature_losses_match_the_hand_computation():
    sac, state, b = make_sac()
    assert sac.target_entropy == -A
    torch.manual_seed(11)
    actor, temperature, metrics = sac.actor_loss(b["features"])
    torch.manual_seed(11)
    noise = torch.randn(B, A, dtype=torch.float64)
    action, log_prob = squashed_sample(state, b["features"], noise)
    q1, q2 = twin_q(state, "critic", b["features"], action)
    log_alpha = state["log_alpha"]
    assert abs(float(log_alpha) - math.log(ALPHA)) < 1e-7
    expected_actor = (log_alpha.exp() * log_prob - torch.minimum(q1, q2)).mean()
    expected_temperature = -(log_alpha * (log_prob + sac.target_entropy)).mean()
    torch.testing.assert_close(actor, expected_actor, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(temperature, expected_temperature, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(metrics["train/entropy"], -log_prob.mean(), rtol=1e-12, atol=1e-12)
    # d(temperature loss)/d log α = −E[log π + H̄]: α falls while the entropy is above H̄
    temperature.backward()
    torch.testing.assert_close(
        sac.log_alpha.grad, -(log_prob + sac.target_entropy).mean(), rtol=1e-12, atol=1e-12
    )
    # the actor's loss does not move α (α enters it detached)
    sac.log_alpha.grad = None
    actor.backward()
    assert sac.log_alpha.grad is None
