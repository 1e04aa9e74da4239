"""The environment loop with tiny parts: a new agent is one class, and the loop gives it
evaluation on schedule, checkpoints, exact resume and stop requests."""

from __future__ import annotations

import dataclasses
import os
import signal

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from latentvi.train.checkpoint import find_latest
from latentvi.train.env_loop import EnvLoop, EnvRunConfig, RunRecord
from latentvi.train.env_schedules import ReplayStorage, StepSchedule
from latentvi.train.metrics import read_metrics
from latentvi.train.signals import RunStopped
from latentvi.train.storage import read_tensors


class Walk(gym.Env):
    """A walk on the integers from a random start in [-3, 3]: action 1 steps right, 0 left;
    reward −|x|; 10 steps per episode."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.x, self.t = int(self.np_random.integers(-3, 4)), 0
        return np.array([self.x], np.float32), {}

    def step(self, action):
        self.x += 1 if int(action) == 1 else -1
        self.t += 1
        return np.array([self.x], np.float32), -abs(self.x), False, self.t >= 10, {}


class SignAgent(nn.Module):
    """Steps towards the origin when its one weight is positive; updates regress the reward on
    −|x| with noise from the global random state (so that resume must restore it)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([-0.5]))
        self.optimizer = torch.optim.SGD(self.parameters(), lr=0.01)

    def act(self, obs, explore: bool = False):
        x = float(obs[0])
        toward = 1 if x < 0 else 0
        if explore and torch.rand(()) < 0.3:
            return int(torch.randint(2, ()))
        return toward if float(self.weight.detach()) > 0 else 1 - toward

    def update(self, batch) -> dict[str, float]:
        noise = 0.1 * torch.randn(batch.reward.shape)
        prediction = -self.weight * batch.obs[:, 0].abs()
        loss = (prediction - batch.reward + noise).pow(2).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss/total": float(loss.detach())}

    def optimizer_state(self) -> dict:
        return {"sgd": self.optimizer.state_dict()}

    def load_optimizer_state(self, state) -> None:
        self.optimizer.load_state_dict(state["sgd"])


RUN = EnvRunConfig(env="walk", steps=200, eval_every=50, eval_episodes=2, checkpoint_every=40,
                   keep_checkpoints=5, progress=False, tensorboard=False)  # fmt: skip


def _train(out, steps=200, resume=False, signal_at_update=None, make_agent=None):
    run = dataclasses.replace(RUN, out=str(out), steps=steps)
    schedule = StepSchedule(learning_starts=20, update_every=2, batch_size=8, log_every=25)
    with EnvLoop(run, make_env=Walk, make_agent=lambda env: (make_agent or SignAgent)(),
                 storage=ReplayStorage(capacity=500, stack=1), schedule=schedule,
                 describe=lambda env: {"run": dataclasses.asdict(run)},
                 # run.json: recorded like a world-model agent's run, under the agent's own name
                 record=lambda env: RunRecord("world-model", {"run": run}, fixed=("run",),
                                              ignore={"run": ("steps",)},
                                              info={"agent": "sign"}),
                 resume=resume) as loop:  # fmt: skip
        if signal_at_update is not None:
            update, calls = loop.agent.update, []

            def signalling(batch):
                calls.append(1)
                if len(calls) == signal_at_update:
                    os.kill(os.getpid(), signal.SIGTERM)
                return update(batch)

            loop.agent.update = signalling
        return loop.train()


def test_evaluations_checkpoints_and_metrics_come_on_schedule(tmp_path):
    state = _train(tmp_path)
    assert state["env_steps"] == 200 and state["episodes"] == 20
    assert [row["env_step"] for row in state["curve"]] == [0, 50, 100, 150, 200]
    assert all(row["return_mean"] <= 0 for row in state["curve"])
    # (after 20 warm-up steps, an update every 2 agent steps)
    assert state["updates"] == (200 - 20) // 2 + 1
    # periodic checkpoints at the first episode boundary after each 40 steps, and the last
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name[0] == "s")
    assert names == [f"step-{s:06d}" for s in (40, 80, 120, 160, 200)]
    rows = [row for row in read_metrics(tmp_path) if "loss/total" in row]
    assert [row["step"] for row in rows] == [25, 50, 75, 100, 125, 150, 175, 200]


def test_a_fresh_run_refuses_a_used_folder_and_resume_needs_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="holds no checkpoint to resume"):
        _train(tmp_path / "empty", resume=True)
    _train(tmp_path / "used", steps=20)
    with pytest.raises(ValueError, match="already holds a run"):
        _train(tmp_path / "used")


def test_a_run_extended_from_its_last_checkpoint_equals_one_that_never_stopped(tmp_path):
    straight = _train(tmp_path / "straight")
    _train(tmp_path / "resumed", steps=100)  # ends at an episode boundary
    resumed = _train(tmp_path / "resumed", resume=True)

    def without_clock(curve):
        return [{k: v for k, v in row.items() if k != "wall_seconds"} for row in curve]

    assert without_clock(resumed["curve"]) == without_clock(straight["curve"])
    a = read_tensors(find_latest(tmp_path / "straight") / "model.safetensors")
    b = read_tensors(find_latest(tmp_path / "resumed") / "model.safetensors")
    assert torch.equal(a["weight"], b["weight"])


def test_sigterm_checkpoints_inside_an_episode_and_the_run_resumes_to_the_end(tmp_path):
    with pytest.raises(RunStopped) as raised:
        _train(tmp_path, signal_at_update=7)
    stopped = raised.value.checkpoint
    assert raised.value.exit_code == 143 and stopped == find_latest(tmp_path)
    step = int(stopped.name.split("-")[1])
    assert 20 < step < 200
    state = _train(tmp_path, resume=True)
    assert state["env_steps"] == 200 and state["curve"][-1]["env_step"] == 200
