"""PlaNet and Dreamer end to end on pixel Pendulum (debug preset, through the CLI), resuming with
the stored episodes, the gradient path of Dreamer's actor, and the errors a user can hit."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
import torch

from latentvi.cli import main
from latentvi.data.episodes import EpisodeStore
from latentvi.jobs.world_model import WorldModelRunConfig, load_run
from latentvi.models.ssm import RSSMConfig
from latentvi.presets import PRESETS, resolve
from latentvi.rl.dreamer import DreamerAgent, DreamerConfig
from latentvi.rl.planet import PlanetAgent, PlanetConfig
from latentvi.rl.world_model_agent import ModelTrainingConfig
from latentvi.train.checkpoint import find_latest, load_checkpoint

# The debug preset, smaller still: one seed episode and one collected episode (400 steps), one
# evaluation episode. Pendulum episodes are 200 environment steps (100 agent steps).
TINY = ["--preset", "debug", "--eval-episodes", "1", "--no-progress", "--no-tensorboard"]
TINY += ["--candidates", "32", "--cem-iterations", "2"]  # PlaNet acting is most of the time


def _cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _curve(run_dir):
    with open(run_dir / "curve.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("agent", ["planet", "dreamer"])
def test_debug_agent_runs_writes_outputs_and_resumes(agent, tmp_path, capsys):
    out = tmp_path / agent
    argv = ["world-model", "train", "--agent", agent, *TINY, "--out", str(out), "--json"]
    code, printed, err = _cli(capsys, *argv, "--steps", "400")
    assert code == 0, err
    summary = json.loads(printed)
    assert summary["env_steps"] == 400 and summary["episodes"] == 2
    assert summary["updates"] == PRESETS["world-model"]["debug"]["train_steps"]
    for name in ("curve.csv", "curve.png", "open_loop.png", "open_loop.csv", "open_loop_mse.png",
                 "frames.png", "metrics.jsonl", "config.json", "summary.json"):  # fmt: skip
        assert (out / name).is_file(), name
    with open(out / "open_loop.csv") as handle:
        errors = list(csv.DictReader(handle))
    assert len(errors) == 30  # the debug preset's horizon
    assert all(0.0 <= float(row["mse"]) <= 1.0 for row in errors)
    shares = summary["time_share"]
    assert set(shares) == {"model", "env", "act"} and sum(shares.values()) == pytest.approx(1.0)
    assert [int(r["env_step"]) for r in _curve(out)] == [400]
    assert find_latest(out).name == "step-000400"
    first = EpisodeStore(out / "episodes").episodes

    # --resume with a larger budget: the counters continue, the stored episodes are kept.
    code, printed, err = _cli(capsys, *argv, "--steps", "600", "--resume")
    assert code == 0, err
    resumed = json.loads(printed)
    assert resumed["env_steps"] == 600 and resumed["episodes"] == 3
    assert resumed["updates"] == 2 * PRESETS["world-model"]["debug"]["train_steps"]
    assert [int(r["env_step"]) for r in _curve(out)] == [400, 600]
    store = EpisodeStore(out / "episodes")
    assert len(store) == 3
    for before, after in zip(first, store.episodes[:2], strict=True):
        for key in before:
            np.testing.assert_array_equal(before[key], after[key])
    name, _, _, step = load_run(out)
    assert name == agent and step == 600
    assert load_checkpoint(out, load_run(out)[1], restore_rng=False)["counters"]["episodes"] == 3


@pytest.mark.slow  # two more runs, ~15 s
def test_resumed_run_equals_uninterrupted_run(tmp_path, capsys):
    common = ["world-model", "train", "--agent", "dreamer", *TINY, "--json"]
    _cli(capsys, *common, "--out", str(tmp_path / "a"), "--steps", "600")
    _cli(capsys, *common, "--out", str(tmp_path / "b"), "--steps", "400")
    _cli(capsys, *common, "--out", str(tmp_path / "b"), "--steps", "600", "--resume")
    straight, resumed = _curve(tmp_path / "a"), _curve(tmp_path / "b")
    assert [r["return_mean"] for r in straight] == [r["return_mean"] for r in resumed]


def _tiny_model():
    return RSSMConfig(action_dim=1, obs_shape=(1, 16, 16), deter_dim=16, stoch_dim=4, hidden=16,
                      channels=(4, 8))  # fmt: skip


def test_dreamer_actor_gradient_flows_through_the_dynamics_only_into_the_actor():
    torch.manual_seed(0)
    agent = DreamerAgent(
        _tiny_model(), ModelTrainingConfig(), DreamerConfig(imag_horizon=4, actor_hidden=(16,))
    )
    obs = torch.randint(0, 256, (6, 3, 1, 16, 16), dtype=torch.uint8)
    posterior = agent.model.observe(obs, torch.zeros(6, 3, 1)).detach()
    actor_loss, critic_loss, metrics = agent.behaviour_losses(posterior)
    actor_loss.backward()
    # Rewards and values are functions of the imagined states only, and the actor's inputs are
    # detached: a non-zero actor gradient can only come through the learned transition.
    assert all(
        p.grad is not None and bool(p.grad.abs().sum() > 0) for p in agent.actor.parameters()
    )
    assert all(p.grad is None for p in agent.model.parameters())  # the model is frozen
    assert all(p.grad is None for p in agent.critic.parameters())
    assert all(p.requires_grad for p in agent.model.parameters())  # and unfrozen afterwards
    critic_loss.backward()
    assert all(p.grad is not None for p in agent.critic.parameters())
    # the actor's objective is the λ-return of the imagined rewards with slow-critic values
    assert metrics["loss/actor"] == pytest.approx(-metrics["train/lambda_return"], rel=0.5)


def test_saturated_actor_has_a_finite_log_density():
    # A tanh policy pushed to its bound: the log-density of its own sample must stay finite
    # (inverting tanh at exactly ±1 would give inf, and 0·inf = NaN in the actor's loss).
    agent = DreamerAgent(_tiny_model(), ModelTrainingConfig(), DreamerConfig(actor_hidden=(8,)))
    with torch.no_grad():
        agent.actor.body[-1].bias.copy_(torch.tensor([40.0, -15.0]))
    policy = agent.actor(torch.zeros(5, agent.model.rssm.feature_dim))
    action = policy.rsample()
    assert bool((action == 1.0).all()) and bool(torch.isfinite(policy.log_prob(action)).all())


def test_divergence_is_refused_before_the_step():
    agent = PlanetAgent(_tiny_model(), ModelTrainingConfig(), PlanetConfig(candidates=8, top_k=2))
    before = [p.detach().clone() for p in agent.parameters()]
    batch = {"obs": torch.zeros(4, 2, 1, 16, 16, dtype=torch.uint8),
             "action": torch.zeros(4, 2, 1), "reward": torch.full((4, 2), float("nan"))}  # fmt: skip
    with pytest.raises(FloatingPointError, match="world-model loss"):
        agent.update(batch)
    assert all(torch.equal(a, b) for a, b in zip(before, agent.parameters(), strict=True))


def test_planet_plans_within_bounds_and_filters_from_the_episode_start():
    torch.manual_seed(0)
    agent = PlanetAgent(
        _tiny_model(),
        ModelTrainingConfig(),
        PlanetConfig(plan_horizon=3, candidates=20, cem_iterations=2, top_k=4),
    )
    frame = np.full((1, 16, 16), 200, np.uint8)
    first = agent.act(frame, explore=True, noise=5.0)  # the noise is clipped to the bounds
    assert first.shape == (1,) and abs(float(first[0])) <= 1.0
    # after reset the filter state is the one WorldModel.observe uses at t = 0
    agent.reset()
    agent.act(frame, explore=False)
    observed = agent.model.observe(torch.as_tensor(frame)[None, None], torch.zeros(1, 1, 1))
    torch.testing.assert_close(agent._state.deter, observed.deter[0])


def test_presets_fill_what_is_not_given():
    (run,) = resolve("world-model", "debug", (WorldModelRunConfig,), {"steps": 123})
    assert run.steps == 123 and run.image_size == PRESETS["world-model"]["debug"]["image_size"]
    assert resolve("world-model", "paper", (DreamerConfig,)) == (DreamerConfig(),)
    with pytest.raises(ValueError, match=r"preset = 'huge'.*debug"):
        resolve("world-model", "huge", (WorldModelRunConfig,))
    with pytest.raises(ValueError, match="top_k"):
        PlanetConfig(candidates=10, top_k=20)
    with pytest.raises(ValueError, match="return_lambda"):
        dataclasses.replace(DreamerConfig(), return_lambda=2.0)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--env", "NoSuchEnv-v0"], "env = 'NoSuchEnv-v0'"),
        (["--env", "CartPole-v1"], "continuous actions"),
        (["--agent", "alphazero"], "invalid choice: 'alphazero'"),
        (["--preset", "huge"], "invalid choice: 'huge'"),
        (["--steps", "0"], "steps = 0 is invalid"),
        (["--resume"], "holds no checkpoint"),
        (["--chunk-length", "500"], "chunk_length = 500"),
    ],
)
def test_bad_input_exits_2_with_one_line(extra, message, tmp_path, capsys):
    argv = ["world-model", "train", *TINY, "--out", str(tmp_path / "run"), *extra]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2  # argparse adds its usage line


def test_an_existing_run_needs_resume(tmp_path, capsys):
    (tmp_path / "run" / "episodes").mkdir(parents=True)
    episode = {"obs": np.zeros((2, 1, 4, 4), np.uint8), "action": np.zeros((1, 1)),
               "reward": np.zeros(1), "terminal": np.zeros(1, bool)}  # fmt: skip
    EpisodeStore(tmp_path / "run" / "episodes").add(episode)
    code, _, err = _cli(capsys, "world-model", "train", *TINY, "--out", str(tmp_path / "run"))
    assert code == 2 and "--resume" in err
