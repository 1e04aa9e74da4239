"""The ``sb3`` preset (Stable-Baselines3 at rl-zoo's settings) and ``gradient_steps`` (issue 24)."""

import gymnasium as gym
import pytest

from latentvi.jobs.latent_q import RunConfig, run_latent_q
from latentvi.presets import resolve
from latentvi.rl.latent_q import LatentQAgent, LatentQConfig
from latentvi.train.checkpoint import load_checkpoint


def _configs(env: str, **overrides):
    return resolve("latent-q", "sb3", (RunConfig, LatentQConfig), {"env": env, **overrides})


def test_the_sb3_preset_is_rl_zoos_sac_and_on_cartpole_its_dqn():
    run, agent = _configs("Pendulum-v1", variant="state")
    assert (run.action_repeat, run.update_every, run.gradient_steps) == (1, 1, 1)
    assert (run.learning_starts, run.buffer_size, agent.batch_size) == (100, 1_000_000, 256)
    assert (agent.lr, agent.tau, agent.discount, agent.init_temperature) == (1e-3, 0.005, 0.99, 1)
    assert agent.critic_norm == "none" and agent.hidden == (256, 256)
    run, agent = _configs("CartPole-v1", variant="state")
    assert (run.steps, run.update_every, run.gradient_steps, run.learning_starts) == (
        50_000, 256, 128, 1000,
    )  # fmt: skip
    assert (agent.lr, agent.batch_size, agent.target_update_every) == (2.3e-3, 64, 128)
    assert (agent.epsilon_start, agent.epsilon_end, agent.epsilon_decay_steps) == (1, 0.04, 8000)
    # a typed option still wins over the preset
    assert _configs("CartPole-v1", gradient_steps=2)[0].gradient_steps == 2


@pytest.mark.parametrize("gradient_steps", [1, 3])
def test_gradient_steps_updates_per_round(tmp_path, gradient_steps):
    """Rounds at agent steps 100, 104, …, 160 (every 4, from learning_starts): 16 of them."""
    out = tmp_path / f"run{gradient_steps}"
    run = RunConfig(
        env="CartPole-v1", action_repeat=1, steps=160, learning_starts=100, update_every=4,
        gradient_steps=gradient_steps, eval_every=1000, eval_episodes=1, checkpoint_every=1000,
        progress=False, tensorboard=False, out=str(out),
    )  # fmt: skip
    agent_config = LatentQConfig(variant="state", hidden=(16,), batch_size=8)
    run_latent_q(agent_config, run)
    env = gym.make("CartPole-v1")
    agent = LatentQAgent(agent_config, env.observation_space, env.action_space)
    counters = load_checkpoint(out, agent, restore_rng=False)["counters"]
    assert counters["env_steps"] == 160
    assert counters["updates"] == 16 * gradient_steps
    assert int(agent.head.updates) == 16 * gradient_steps
