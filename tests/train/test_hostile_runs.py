"""Run folders of the agents (world models, latent-Q) are trusted no more than a VAE's: a
run.json declaring sizes that cannot fit, a checkpoint whose tensors disagree with the
configuration, an episode file of another frame size: one line naming the file, exit code 2,
nothing allocated for the declared sizes (they are counted on the meta device first), and the
folder byte-identical afterwards. Also: the episode storage a run keeps in memory is what
:meth:`EpisodeStorage.projected_bytes` estimates before it starts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import latentvi
from latentvi.config import from_dict
from latentvi.data.episodes import EpisodeStore, load_episode, save_episode
from latentvi.jobs.world_model import WorldModelRunConfig, make_run_env
from latentvi.train.env_schedules import EpisodeStorage
from latentvi.train.runs import read_run

from .test_faults import run_cli, snapshot

WORLD = ["world-model", "train", "--agent", "dreamer", "--preset", "debug", "--eval-episodes",
         "1", "--no-progress", "--no-tensorboard"]  # fmt: skip
LATENT_Q = ["rl", "latent-q", "--env", "latentvi/PixelChain-v0", "--variant", "vae", "--preset",
            "debug", "--steps", "150", "--no-progress", "--no-tensorboard"]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile-runs")
    runs = {"world-model": root / "dreamer", "latent-q": root / "latent-q"}
    assert latentvi.cli.main([*WORLD, "--steps", "400", "--out", str(runs["world-model"])]) == 0
    assert latentvi.cli.main([*LATENT_Q, "--out", str(runs["latent-q"])]) == 0
    return runs


@pytest.fixture
def copy(trained, tmp_path):
    def make(kind: str) -> Path:
        target = tmp_path / kind
        shutil.copytree(trained[kind], target)
        return target

    return make


def edit_run_json(run: Path, change) -> None:
    value = json.loads((run / "run.json").read_text())
    change(value)
    (run / "run.json").write_text(json.dumps(value))


def refused(run: Path, capsys, argv: list[str]) -> str:
    """``argv`` on ``run``: exit 2, one line, the folder byte-identical; the line."""
    capsys.readouterr()
    before = snapshot(run)
    status, err = run_cli(argv, capsys)
    assert status == 2 and len(err) == 1, err
    assert snapshot(run) == before
    assert "Traceback" not in err[0]
    return err[0]


def test_episode_storage_is_what_was_projected_before_the_run(trained):
    run = from_dict(WorldModelRunConfig, read_run(trained["world-model"]).config("run"))
    env = make_run_env(run)
    projected, what = EpisodeStorage.projected_bytes(env, run)
    env.close()
    store = EpisodeStore(trained["world-model"] / "episodes")
    measured = sum(array.nbytes for episode in store.episodes for array in episode.values())
    assert what.startswith("2 episodes of 200 steps")
    assert abs(projected - measured) <= 0.01 * measured, (projected, measured)


def test_an_episode_file_of_another_frame_size_names_the_file_and_both_shapes(copy, capsys):
    run = copy("world-model")
    name = "episode-000001-100.npz"
    episode = load_episode(run / "episodes" / name)
    episode["obs"] = np.zeros((101, 1, 16, 16), np.uint8)
    save_episode(run / "episodes" / name, episode)
    line = refused(run, capsys, [*WORLD, "--steps", "600", "--resume", "--out", str(run)])
    assert f"episode file {run / 'episodes' / name} has frames (1, 16, 16) where the run's " in line
    assert "gives (1, 32, 32)" in line and "delete it" in line


@pytest.mark.parametrize(
    ("kind", "change", "words"),
    [
        ("world-model", lambda v: v["configs"]["model"].update(deter_dim=10**7),
         "run.json too large: the network it declares needs at least"),
        ("world-model", lambda v: v["configs"]["model"].update(deter_dim=10**12),
         "run.json declares a network too large to build"),
        ("world-model", lambda v: v["configs"]["model"].update(deter_dim=48),
         "model.safetensors does not match the model: shape mismatch"),
        ("world-model", lambda v: v["configs"]["model"].update(obs_shape=[1, 10**6, 10**6]),
         "run.json too large"),
        ("latent-q", lambda v: v["configs"]["agent"].update(latent_dim=10**9),
         "run.json too large: the network it declares needs at least"),
        ("latent-q", lambda v: v["configs"]["agent"].update(hidden=[48, 48]),
         "model.safetensors does not match the model: shape mismatch"),
        ("latent-q", lambda v: v["info"]["observation_space"].update(shape=[1, 10**6, 10**6]),
         "run.json declares a space of shape [1, 1000000, 1000000]"),
    ],
    ids=["wm-huge", "wm-overflow", "wm-mismatch", "wm-frames", "lq-huge", "lq-mismatch",
         "lq-space"],
)  # fmt: skip
def test_hostile_agent_runs_are_refused_in_one_line_before_allocating(
    copy, capsys, kind, change, words
):
    run = copy(kind)
    edit_run_json(run, change)
    line = refused(run, capsys, ["eval", str(run)])
    assert words in line and str(run) in line
    with pytest.raises(ValueError, match=r"restore it or retrain|build the model with"):
        latentvi.load(run)
