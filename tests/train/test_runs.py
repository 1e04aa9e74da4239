"""The run-folder schema: run.json round trip, its errors, and the checks a command makes before
it writes (which themselves write nothing)."""

import dataclasses
import json

import pytest
from torch import nn

from latentvi.config import option
from latentvi.train.checkpoint import save_checkpoint
from latentvi.train.runs import RUN_FILE, check_run_folder, read_run, space_info, write_run


@dataclasses.dataclass(frozen=True)
class Model:
    width: int = option(4, "width")
    hidden: tuple[int, ...] = option((8, 8), "hidden sizes")


@dataclasses.dataclass(frozen=True)
class Schedule:
    steps: int = option(10, "steps")
    seed: int = option(0, "seed")


def _with_checkpoint(folder, model=Model(), schedule=Schedule()):
    write_run(folder, "vae", {"model": model, "run": schedule}, data_shape=[1, 2, 2])
    save_checkpoint(folder, 3, nn.Linear(2, 2))
    return folder


def test_run_json_round_trips_kind_configs_and_info(tmp_path):
    write_run(tmp_path, "vae", {"model": Model(hidden=(3,))}, data_shape=[1, 8, 8])
    run = read_run(tmp_path)
    assert (run.kind, run.info, run.path) == ("vae", {"data_shape": [1, 8, 8]}, tmp_path)
    assert run.config("model") == {"width": 4, "hidden": [3]}
    with pytest.raises(ValueError, match="no 'data' config"):
        run.config("data")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{not json", "corrupt"),
        ('{"format": "latentvi-run-1", "configs": {}}', "corrupt"),
        ('{"format": "other", "kind": "vae", "configs": {}}', "format"),
        ('{"format": "latentvi-run-1", "kind": "gan", "configs": {}}', "unknown run kind 'gan'"),
    ],
)
def test_a_bad_run_json_is_named_in_the_error(tmp_path, text, says):
    (tmp_path / RUN_FILE).write_text(text)
    with pytest.raises(ValueError, match=says) as error:
        read_run(tmp_path)
    assert RUN_FILE in str(error.value)


def test_a_folder_that_is_no_run_says_so(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_run(tmp_path / "missing")
    with pytest.raises(ValueError, match="not a latentvi run folder"):
        read_run(tmp_path)
    with pytest.raises(ValueError, match="kind = 'gan' is invalid"):
        write_run(tmp_path, "gan", {})
    assert not (tmp_path / RUN_FILE).exists()


def test_fresh_runs_need_a_folder_without_checkpoints(tmp_path):
    check_run_folder(tmp_path / "new", resume=False)
    check_run_folder(tmp_path, resume=False)  # a folder without checkpoints is fine
    with pytest.raises(ValueError, match="already holds a run"):
        check_run_folder(tmp_path, resume=False, holds_run=True)
    folder = _with_checkpoint(tmp_path / "run")
    with pytest.raises(ValueError, match=r"already holds a run \(latest checkpoint step-000003\)"):
        check_run_folder(folder, resume=False)
    assert not (tmp_path / "new").exists()


def test_a_resume_needs_a_checkpoint_and_the_runs_own_configs(tmp_path):
    with pytest.raises(ValueError, match="no checkpoint to resume"):
        check_run_folder(tmp_path, resume=True)
    folder = _with_checkpoint(tmp_path / "run")
    configs = {"model": Model(), "run": Schedule(steps=50)}
    fixed = {"kind": "vae", "fixed": ("model", "run"), "ignore": {"run": ("steps",)}}
    check_run_folder(folder, True, configs=configs, **fixed)  # only an ignored field differs
    with pytest.raises(ValueError, match=r"model: hidden = \[8\] \(the run has \[8, 8\]\)"):
        check_run_folder(folder, True, configs={**configs, "model": Model(hidden=(8,))}, **fixed)
    with pytest.raises(ValueError, match=r"run: seed = 1 \(the run has 0\)"):
        check_run_folder(folder, True, configs={**configs, "run": Schedule(seed=1)}, **fixed)
    with pytest.raises(ValueError, match="holds a vae run, not a cvae run"):
        check_run_folder(folder, True, configs=configs, **{**fixed, "kind": "cvae"})


def test_space_info_describes_boxes_compactly(tmp_path):
    import gymnasium as gym
    import numpy as np

    frames = space_info(gym.spaces.Box(0, 255, (3, 64, 64), np.uint8))
    assert frames == {"shape": [3, 64, 64], "dtype": "uint8", "low": 0.0, "high": 255.0}
    torque = space_info(gym.spaces.Box(np.float32([-2.0, -1.0]), np.float32([2.0, 1.0])))
    assert torque["low"] == [-2.0, -1.0] and torque["high"] == [2.0, 1.0]
    assert space_info(gym.spaces.Discrete(3)) == {"n": 3}
    assert json.loads(json.dumps(frames)) == frames


def test_a_run_saved_before_an_option_was_added_resumes_at_its_default(tmp_path):
    """An option added to the library after a run was saved (here ``seed``, absent from the
    run.json) is what that run did at its default: the resume goes on; any other value is refused."""
    folder = _with_checkpoint(tmp_path / "run")
    record = json.loads((folder / RUN_FILE).read_text())
    del record["configs"]["run"]["seed"]
    (folder / RUN_FILE).write_text(json.dumps(record))
    fixed = {"kind": "vae", "fixed": ("model", "run")}
    check_run_folder(folder, True, configs={"model": Model(), "run": Schedule()}, **fixed)
    with pytest.raises(ValueError, match=r"run: seed = 1 \(the run has 0\)"):
        check_run_folder(folder, True, configs={"model": Model(), "run": Schedule(seed=1)}, **fixed)
