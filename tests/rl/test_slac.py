"""SLAC: the actor's history window, the SAC target on the chunks' transitions, which parameters
each loss reaches, and a debug run through the CLI that resumes."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from latentvi.cli import main
from latentvi.data.episodes import EpisodeStore
from latentvi.models.ssm import RSSMConfig
from latentvi.presets import resolve
from latentvi.rl.slac import SlacAgent, SlacConfig, history_windows
from latentvi.rl.world_model_agent import ModelTrainingConfig
from latentvi.train.checkpoint import find_latest, load_checkpoint


def _agent(history: int = 3, chunk_length: int = 4, **slac) -> SlacAgent:
    torch.manual_seed(0)
    model = RSSMConfig(action_dim=2, obs_shape=(1, 16, 16), deter_dim=8, stoch_dim=4, hidden=8,
                       channels=(2, 4), embed_dim=5)  # fmt: skip
    training = ModelTrainingConfig(batch_size=2, chunk_length=chunk_length)
    return SlacAgent(model, training, SlacConfig(history=history, sac_hidden=(8,), **slac))


def _batch(steps: int, batch: int, first: list[bool], seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    action = torch.rand(steps, batch, 2, generator=generator) * 2 - 1
    reward = torch.randn(steps, batch, generator=generator)
    starts = torch.tensor(first, dtype=torch.float32)
    action[0, starts.bool()], reward[0, starts.bool()] = 0.0, 0.0  # nothing led to o_0
    obs = torch.randint(0, 256, (steps, batch, 1, 16, 16), generator=generator, dtype=torch.uint8)
    return {
        "obs": obs,
        "action": action,
        "reward": reward,
        "terminal": torch.zeros(steps, batch),
        "first": torch.cat([starts[None], torch.zeros(steps - 1, batch)]),
    }


def test_history_windows_hold_the_last_entries_oldest_first_with_zeros_before_the_start():
    sequence = torch.arange(1.0, 6.0).reshape(5, 1, 1)  # values 1..5 at t = 0..4
    windows = history_windows(sequence, 3)[:, 0]
    expected = [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5]]
    torch.testing.assert_close(windows, torch.tensor(expected, dtype=torch.float32))
    assert history_windows(sequence, 0).shape == (5, 1, 0)


def test_acting_window_is_the_last_k_frames_and_actions_and_matches_training():
    k = 3
    agent = _agent(history=k)
    frames = torch.randint(0, 256, (5, 1, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        embeds = agent.model.embed(frames)  # [5, E]
    taken, inputs = [], []
    for t in range(5):
        taken.append(torch.as_tensor(agent.act(frames[t].numpy(), explore=True)))
        window_embeds, window_actions = agent.history()
        inputs.append(torch.cat([window_embeds.reshape(-1), window_actions.reshape(-1)]))
        # exactly the last K embeddings, zeros where the episode had not started
        wanted = torch.cat([torch.zeros(max(0, k - 1 - t), 5), embeds[max(0, t - k + 1) : t + 1]])
        torch.testing.assert_close(window_embeds, wanted)
        # and the K−1 actions between them: a_{t−K+1} … a_{t−1}, zeros before the first action
        before = [torch.zeros(2)] * k + taken[:t]
        torch.testing.assert_close(window_actions, torch.stack(before[-(k - 1) :]))
    # the acting window at t is the training history at t of a chunk that starts at the reset
    aligned = torch.stack([torch.zeros(2), *taken[:-1]])[:, None]  # actions[t] = a_{t−1}
    training = torch.cat([history_windows(embeds[:, None], k), history_windows(aligned, k - 1)], -1)
    torch.testing.assert_close(torch.stack(inputs), training[:, 0])
    agent.reset()
    window_embeds, window_actions = agent.history()
    assert not window_embeds.any() and not window_actions.any()
    agent.act(frames[0].numpy(), explore=False)
    assert not agent.history()[0][:-1].any() and not agent.history()[1].any()


def test_critic_loss_is_the_sac_target_on_the_chunks_transitions():
    k = 2
    agent = _agent(history=k, chunk_length=k + 1, init_temperature=0.3)
    # chunk 0 starts mid-episode: one transition (t = K−1); chunk 1 at the reset: t = 0 and 1
    batch = _batch(k + 1, 2, first=[False, True])
    with torch.no_grad():
        embeds = agent.model.embed(batch["obs"])
        posterior = agent.model.observe(batch["obs"], batch["action"])
    transitions = agent.transitions(batch, embeds, posterior)
    assert transitions["action"].shape == (3, 2)
    features = agent.model.rssm.features(posterior)  # [L, B, F]

    def history(t: int, b: int) -> torch.Tensor:  # e_{t−1}, e_t and a_{t−1} = action[t]
        earlier = embeds[t - 1, b] if t >= 1 else torch.zeros(5)
        return torch.cat([earlier, embeds[t, b], batch["action"][t, b]])

    pairs = [(0, 1), (1, 0), (1, 1)]  # (t, b) in the order of the flattened [L−1, B] mask
    sac, gamma = agent.sac, agent.config.sac_discount
    torch.manual_seed(5)
    loss, _ = agent.critic_loss(transitions)
    torch.manual_seed(5)
    with torch.no_grad():  # y = r_t + γ (min_i Q̄_i(x_{t+1}, a') − α log π(a'|h_{t+1}))
        policy = sac.actor(torch.stack([history(t + 1, b) for t, b in pairs]))
        next_action = policy.rsample()
        next_features = torch.stack([features[t + 1, b] for t, b in pairs])
        soft = torch.minimum(*sac.critic_target(next_features, next_action))
        soft = soft - 0.3 * policy.log_prob(next_action)
        target = torch.stack([batch["reward"][t + 1, b] for t, b in pairs]) + gamma * soft
        q1, q2 = sac.critic(
            torch.stack([features[t, b] for t, b in pairs]),
            torch.stack([batch["action"][t + 1, b] for t, b in pairs]),  # a_t leads to t+1
        )
        expected = (q1 - target).pow(2).mean() + (q2 - target).pow(2).mean()
    torch.testing.assert_close(loss, expected)


def _grads(module):
    return [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in module.parameters()]


def test_each_loss_reaches_only_its_own_parameters():
    agent = _agent(history=2, chunk_length=4)
    batch = _batch(4, 2, first=[True, False])
    embeds = agent.model.embed(batch["obs"])  # neither these
    posterior = agent.model.observe(batch["obs"], batch["action"])  # nor these detached here
    transitions = agent.transitions(batch, embeds, posterior)
    sac = agent.sac
    critic_loss, _ = agent.critic_loss(transitions)
    critic_loss.backward()
    assert all(_grads(sac.critic)) and not any(_grads(sac.actor)) and sac.log_alpha.grad is None
    assert all(p.grad is None for p in agent.model.parameters())
    agent.zero_grad(set_to_none=True)
    actor_loss, temperature_loss, _ = agent.actor_loss(transitions)
    actor_loss.backward()
    assert all(_grads(sac.actor)) and not any(_grads(sac.critic))  # the critics are frozen
    assert all(p.grad is None for p in agent.model.parameters()) and sac.log_alpha.grad is None
    assert all(p.requires_grad for p in sac.critic.parameters())  # and unfrozen afterwards
    agent.zero_grad(set_to_none=True)
    temperature_loss.backward()
    assert bool(sac.log_alpha.grad != 0) and not any(_grads(sac.actor))


def test_model_only_updates_then_both():
    agent = _agent(history=2, chunk_length=4, model_only_updates=1)
    batch = _batch(4, 2, first=[True, False])

    def snapshot():
        return {name: p.detach().clone() for name, p in agent.named_parameters()}

    def changed(before):
        after = dict(agent.named_parameters())
        return {name for name, value in before.items() if not torch.equal(value, after[name])}

    before = snapshot()
    metrics = agent.update(batch)
    moved = changed(before)
    assert "loss/critic" not in metrics and moved
    assert all(name.startswith("model.") for name in moved)  # the model alone
    before = snapshot()
    metrics = agent.update(batch)
    moved = changed(before)
    assert metrics["train/sac_transitions"] == 3 + 2  # chunk 0 (reset): t = 0, 1, 2; 1: t = 1, 2
    for prefix in ("model.", "sac.actor.", "sac.critic.q1", "sac.log_alpha"):
        assert any(name.startswith(prefix) for name in moved), prefix
    assert any(name.startswith("sac.critic_target") for name in moved)  # Polyak
    assert int(agent.update_count) == 2


def test_short_chunks_are_refused():
    with pytest.raises(ValueError, match=r"chunk_length = 4 is invalid.*history \+ 1 = 5"):
        _agent(history=4, chunk_length=4)
    with pytest.raises(ValueError, match="history"):
        SlacConfig(history=0)


TINY = ["--preset", "debug", "--eval-episodes", "1", "--no-progress", "--no-tensorboard"]


def test_debug_run_through_the_cli_resumes_with_its_episodes(tmp_path, capsys):
    out = tmp_path / "slac"
    argv = ["world-model", "train", "--agent", "slac", *TINY, "--out", str(out), "--json"]
    assert main([*argv, "--steps", "300"]) == 0
    summary = json.loads(capsys.readouterr().out)
    # one seed episode, 5 updates, one collected episode: 400 environment steps
    assert summary["env_steps"] == 400 and summary["updates"] == 5
    with open(out / "curve.csv") as handle:
        assert [int(row["env_step"]) for row in csv.DictReader(handle)] == [400]
    first = EpisodeStore(out / "episodes").episodes
    assert main([*argv, "--steps", "600", "--resume"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["env_steps"] == 600 and resumed["episodes"] == 3
    with open(out / "curve.csv") as handle:
        assert [int(row["env_step"]) for row in csv.DictReader(handle)] == [400, 600]
    store = EpisodeStore(out / "episodes")
    assert len(store) == 3
    for before, after in zip(first, store.episodes[:2], strict=True):
        np.testing.assert_array_equal(before["obs"], after["obs"])
    config = json.loads((out / "config.json").read_text())
    assert config["slac"]["history"] == 4 and config["slac"]["model_only_updates"] == 2
    model = RSSMConfig(**{k: tuple(v) if isinstance(v, list) else v
                          for k, v in config["model"].items()})  # fmt: skip
    agent = SlacAgent(
        model, ModelTrainingConfig(**config["training"]), SlacConfig(**config["slac"])
    )
    loaded = load_checkpoint(find_latest(out), agent, restore_rng=False)
    # the update count survived the resume: 10 updates, of which the first 2 trained the model alone
    assert int(agent.update_count) == 10
    optimizers = loaded["optimizers"]
    assert {"model", "critic", "actor", "alpha"} <= set(optimizers)
    assert optimizers["model"]["state"][0]["step"] == 10
    assert optimizers["critic"]["state"][0]["step"] == 8


def test_the_paper_preset_gives_slac_its_batch_and_leaves_the_others_alone():
    def preset_config(config_type, preset, values=None, agent=None):
        return resolve("world-model", preset, (config_type,), values, agent=agent)[0]

    slac = preset_config(ModelTrainingConfig, "paper", agent="slac")
    assert (slac.batch_size, slac.chunk_length) == (32, 9)  # 32 sequences of 8 steps
    assert preset_config(ModelTrainingConfig, "paper", agent="dreamer") == ModelTrainingConfig()
    config = preset_config(SlacConfig, "paper", agent="slac")
    assert (config.history, config.sac_hidden, config.sac_lr, config.sac_discount) == (
        8, (256, 256), 3e-4, 0.99,
    )  # fmt: skip
    # an explicit value wins over the agent's preset value
    assert preset_config(ModelTrainingConfig, "paper", {"batch_size": 7}, "slac").batch_size == 7
