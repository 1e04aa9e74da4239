"""The latent-Q job end to end: the pixel chain solved, exact resume, CLI smoke runs and errors."""

import json
import shutil

import gymnasium as gym
import pytest
import torch

from latentvi.cli import main
from latentvi.envs.chain import optimal_return
from latentvi.envs.pixels import make_env
from latentvi.jobs.latent_q import RunConfig, run_latent_q
from latentvi.presets import PRESETS
from latentvi.rl.latent_q import LatentQConfig
from latentvi.train.checkpoint import find_latest, list_checkpoints
from latentvi.train.metrics import read_metrics
from latentvi.train.storage import read_tensors

CHAIN = "latentvi/PixelChain-v0"
DEBUG = PRESETS["latent-q"]["debug"]
AGENT = {k: v for k, v in DEBUG.items() if k in LatentQConfig.__dataclass_fields__}
RUN = {k: v for k, v in DEBUG.items() if k in RunConfig.__dataclass_fields__}
RUN |= {"env": CHAIN, "frame_stack": 1, "action_repeat": 1, "progress": False, "tensorboard": False}


def _run(tmp_path, name, agent=None, resume=False, **run):
    config = RunConfig(**(RUN | {"out": str(tmp_path / name)} | run))
    return run_latent_q(LatentQConfig(**(AGENT | (agent or {}))), config, resume=resume)


def _curve(summary):
    with open(summary["files"]["curve_csv"]) as handle:
        return [line.split(",") for line in handle.read().splitlines()[1:]]


@pytest.mark.parametrize("variant", ["vae", "vae-pretrained"])
def test_latent_q_agent_reaches_the_optimal_return_on_the_pixel_chain(tmp_path, variant):
    torch.manual_seed(0)
    summary = _run(tmp_path, variant, {"variant": variant}, seed=0)
    curve = _curve(summary)
    best = optimal_return(5)  # 0.7: four steps right
    assert float(curve[0][1]) < best - 1.0  # the untrained greedy policy does not solve it
    assert summary["final_return_mean"] == pytest.approx(best, abs=1e-9)
    assert summary["final_return_std"] == pytest.approx(0.0, abs=1e-9)
    assert (tmp_path / variant / "reconstructions.png").is_file()
    if variant == "vae-pretrained":
        pretrain = json.loads((tmp_path / variant / "pretrain.json").read_text())
        assert (
            pretrain["transitions"] > 0
            and (tmp_path / variant / "prior-data.safetensors").is_file()
        )


@pytest.mark.slow  # ~10 s on an idle core
def test_sac_on_the_latent_reaches_the_optimal_return_on_the_continuous_chain(tmp_path):
    # Seeds 0, 1 and 2 all solve it within 800 steps (checked when the test was written).
    summary = _run(tmp_path, "sac", env="latentvi/PixelChainContinuous-v0", steps=800, seed=1)
    curve = _curve(summary)
    assert float(curve[0][1]) < optimal_return(5) - 1.0
    assert summary["final_return_mean"] == pytest.approx(optimal_return(5), abs=1e-9)


def test_resume_from_a_periodic_checkpoint_continues_exactly(tmp_path):
    straight = _run(tmp_path, "straight", seed=1)
    _run(tmp_path, "interrupted", seed=1)
    # Drop everything after the first periodic (episode-boundary) checkpoint, then resume.
    folders = list_checkpoints(tmp_path / "interrupted")
    resume_step = int(folders[0].name.split("-")[1])
    assert len(folders) >= 2 and 200 <= resume_step < 400
    for folder in folders[1:]:
        shutil.rmtree(folder)
    (folders[0].parent / "latest").unlink()
    early = [r for r in read_metrics(tmp_path / "interrupted") if r["step"] <= resume_step]
    resumed = _run(tmp_path, "interrupted", seed=1, resume=True)
    assert resumed["env_steps"] == straight["env_steps"] == 400
    # It continued (the rows logged before the checkpoint are the original ones, times and all)…
    rows = read_metrics(tmp_path / "interrupted")
    assert [r for r in rows if r["step"] <= resume_step] == early
    # …to the same evaluations (step, return mean and std, episodes; only the wall clock
    # differs) and bitwise the same final weights as the run that never stopped.
    assert [row[:4] for row in _curve(resumed)] == [row[:4] for row in _curve(straight)]
    a = read_tensors(find_latest(tmp_path / "straight") / "model.safetensors")
    b = read_tensors(find_latest(tmp_path / "interrupted") / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cli_debug_preset_runs_and_resumes_in_seconds(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["rl", "latent-q", "--env", CHAIN, "--variant", "vae", "--preset", "debug",
            "--frame-stack", "2", "--action-repeat", "1", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main([*argv, "--steps", "150", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["env_steps"] == 150
    for name in ("curve.csv", "curve.png", "reconstructions.png", "metrics.csv", "summary.json"):
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").glob("events.out.tfevents.*"))
    assert main([*argv, "--steps", "250", "--resume", "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["env_steps"] == 250
    steps = [int(row.split(",")[0]) for row in (out / "curve.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps)) and steps[-1] == 250  # no evaluation repeated
    # A fresh run into a used folder is refused.
    assert main([*argv, "--steps", "150"]) == 2
    assert "already holds a run" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--env", "Nope-v1"], "not a registered Gymnasium environment"),
        (["--env", CHAIN, "--variant", "state"], "observes images"),
        (["--env", CHAIN, "--variant", "state", "--pixels"], "uses the state"),
        (["--env", "CartPole-v1", "--variant", "vae", "--no-pixels"], "observes pixels"),
        (["--env", CHAIN, "--variant", "vae", "--latent-dim", "0"], "latent_dim"),
        (["--env", CHAIN, "--variant", "telepathy"], "invalid choice"),
    ],
)
def test_cli_bad_environments_and_options_exit_2_with_one_line(tmp_path, capsys, argv, message):
    try:
        code = main(["rl", "latent-q", *argv, "--preset", "debug", "--out", str(tmp_path / "x")])
    except SystemExit as exit_info:  # argparse's own errors
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_make_env_rejects_observation_types_it_cannot_use():
    class DictObservations(gym.Env):
        observation_space = gym.spaces.Dict({"a": gym.spaces.Box(-1, 1, (2,))})
        action_space = gym.spaces.Discrete(2)

        def __init__(self, render_mode=None):
            self.render_mode = render_mode

    gym.register(id="latentvi-test/DictObs-v0", entry_point=DictObservations)
    with pytest.raises(ValueError, match="flat Box"):
        make_env("latentvi-test/DictObs-v0")
    with pytest.raises(ValueError, match="does not render rgb_array"):
        make_env("latentvi-test/DictObs-v0", pixels=True)
    with pytest.raises(ValueError, match="observes images"):
        make_env(CHAIN, pixels=False)
    with pytest.raises(ValueError, match="not a registered"):
        make_env("CartPole-v99")
