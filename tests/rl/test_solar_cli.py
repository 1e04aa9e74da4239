"""``latentvi world-model train --agent solar`` end to end on pixel Pendulum (debug preset, tiny
budget): outputs, checkpoint, ``latentvi.load``, resume, and a bad option."""

from __future__ import annotations

import json

import torch

import latentvi
from latentvi.cli import main
from latentvi.rl.solar import SolarAgent
from latentvi.train.checkpoint import find_latest

TINY = ["world-model", "train", "--agent", "solar", "--preset", "debug", "--eval-episodes", "1"]
TINY += ["--no-progress", "--no-tensorboard", "--json"]


def test_solar_debug_run_loads_and_resumes(tmp_path, capsys):
    out = tmp_path / "solar"
    code = main([*TINY, "--steps", "400", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["agent"] == "solar" and summary["env_steps"] == 400
    assert summary["episodes"] == 2 and summary["updates"] == 5  # debug: 5 updates per episode
    for name in ("curve.csv", "curve.png", "frames.png", "summary.json", "run.json"):
        assert (out / name).is_file(), name
    assert find_latest(out).name == "step-000400"
    agent = latentvi.load(out)
    assert isinstance(agent, SolarAgent)
    # the debug preset improves after each exploring episode: the evaluation's reset did it
    assert int(agent.iterations) == 1
    assert torch.isfinite(agent.policy_K).all() and torch.isfinite(agent.policy_k).all()
    assert (torch.linalg.eigvalsh(agent.policy_S) > 0).all()
    code = main([*TINY, "--steps", "600", "--out", str(out), "--resume"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["env_steps"] == 600
    assert int(latentvi.load(out).iterations) >= 2
    code = main(["eval", str(out), "--episodes", "1", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["agent"] == "solar"
    code = main(["plot", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert (out / "figures" / "curve.png").is_file()


def test_solar_bad_option_is_one_line(tmp_path, capsys):
    code = main([*TINY, "--kl-bound", "0", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code == 2 and "kl_bound" in err and len(err.strip().splitlines()) == 1
