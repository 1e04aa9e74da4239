"""``latentvi world-model train --agent e2c``: the E2C experiment through the world-model CLI, its
own options (and their older ``--e2c-*`` spellings) over E2C's preset, and the errors for what it
cannot honour."""

import json

import pytest

from latentvi.cli import main
from latentvi.presets import PRESETS

# the debug preset, smaller still: 4 updates on 256 transitions, one control trial
SMALL = ["--steps", "4", "--transitions", "256", "--trials", "1"]
DEBUG = PRESETS["e2c"]["debug"]


def test_debug_run_end_to_end_with_its_own_options(tmp_path, capsys):
    out = tmp_path / "e2c"
    argv = ["world-model", "train", "--agent", "e2c", "--preset", "debug", "--seed", "3"]
    code = main([*argv, "--no-progress", *SMALL, "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["trials"] == 1 and 0.0 <= summary["success_rate"] <= 1.0
    # typed options override the preset; the preset fills the rest
    run, model = summary["run_config"], summary["model_config"]
    assert run["steps"] == 4 and run["transitions"] == 256 and run["seed"] == 3
    assert run["image_size"] == DEBUG["image_size"]
    assert model["hidden"] == list(DEBUG["hidden"])
    saved = json.loads((out / "config.json").read_text())
    assert saved["preset"] == "debug" and saved["run"] == run and saved["model"] == model
    for name in ("summary.json", "reconstructions.png", "latent.png", "control.png"):
        assert (out / name).stat().st_size > 0, name


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--env", "MountainCarContinuous-v0"], "env = 'MountainCarContinuous-v0' is invalid"),
        (["--resume"], "holds no checkpoint to resume"),
        (["--e2c-latent-dim", "0"], "latent_dim"),
    ],
)
def test_what_e2c_cannot_honour_exits_2_with_one_line(extra, message, tmp_path, capsys):
    argv = ["world-model", "train", "--agent", "e2c", "--preset", "debug", *SMALL]
    code = main([*argv, "--out", str(tmp_path / "run"), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "summary.json").exists()


# ~10 s: two tiny E2C runs
def test_a_stopped_e2c_run_resumes_to_the_same_model_and_control(monkeypatch, tmp_path, capsys):
    import os
    import signal

    import torch

    from latentvi.models.e2c import E2C
    from latentvi.train.checkpoint import find_latest
    from latentvi.train.storage import read_tensors

    argv = ["world-model", "train", "--agent", "e2c", "--preset", "debug", "--no-progress",
            "--steps", "12", "--transitions", "256", "--trials", "1", "--json"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "straight")]) == 0
    stopped = [*argv, "--out", str(tmp_path / "stopped")]
    with monkeypatch.context() as patch:  # SIGTERM inside training step 5
        original, calls = E2C.loss, []

        def signalling(self, batch):
            calls.append(1)
            if len(calls) == 5:
                os.kill(os.getpid(), signal.SIGTERM)
            return original(self, batch)

        patch.setattr(E2C, "loss", signalling)
        assert main(stopped) == 143
    assert not (tmp_path / "stopped" / "summary.json").exists()
    assert main([*stopped, "--resume"]) == 0
    a, b = (read_tensors(find_latest(tmp_path / run) / "model.safetensors")
            for run in ("straight", "stopped"))  # fmt: skip
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summaries = [json.loads((tmp_path / run / "summary.json").read_text())
                 for run in ("straight", "stopped")]  # fmt: skip
    for key in ("success_rate", "trials"):
        assert summaries[0][key] == summaries[1][key], key
