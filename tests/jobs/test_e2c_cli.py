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
        (["--resume"], "cannot resume"),
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
