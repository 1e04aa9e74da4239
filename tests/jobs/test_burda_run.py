"""benchmarks/burda_run.py: stopped and run again, it ends with the weights and the figure of an
uninterrupted run, keeps one resumable checkpoint while it goes, and leaves weights that
``latentvi.load`` opens."""

import importlib.util
import json
import sys
from pathlib import Path

import torch

import latentvi
from latentvi.train import find_latest
from latentvi.train.checkpoint import list_checkpoints

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
TINY = ["--dataset", "digits", "--epochs", "3", "--hidden", "16", "--latent-dim", "2"]
TINY += ["--checkpoint-every", "20", "--seed", "4"]


def _script():
    sys.path.insert(0, str(BENCHMARKS))  # the script imports its neighbour results_io
    try:
        spec = importlib.util.spec_from_file_location("burda_run", BENCHMARKS / "burda_run.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def _run(script, folder: Path, *extra: str) -> int:
    return script.main(
        [
            "--out", str(folder / "run"), "--pretrained", str(folder / "pretrained"),
            "--result", str(folder / "result.json"), "--eval-samples", "10",
            "--eval-examples", "50", "--", *TINY, *extra,
        ]
    )  # fmt: skip


def test_stopped_and_resumed_equals_uninterrupted(tmp_path):
    script = _script()
    assert _run(script, tmp_path / "once") == 0
    stopped = tmp_path / "stopped"
    assert _run(script, stopped, "--max-steps", "100") == 0  # stops in epoch 2 of 3
    assert not (stopped / "result.json").exists()  # not finished: no figure yet
    assert len(list_checkpoints(stopped / "run" / "checkpoints")) >= 1
    assert find_latest(stopped / "run").name == "step-000100"
    assert _run(script, stopped) == 0  # the same command again: resumes and finishes
    once = latentvi.load(tmp_path / "once" / "pretrained")
    resumed = latentvi.load(stopped / "pretrained")
    for (name, a), (_, b) in zip(
        once.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    first = json.loads((tmp_path / "once" / "result.json").read_text())
    second = json.loads((stopped / "result.json").read_text())
    assert first["test"] == second["test"] and first["epochs"] == 3
    assert not (stopped / "run" / "checkpoints").exists()  # removed once the figure is in
    assert once.config.latent_dim == 2 and once.config.hidden == (16,)


def test_the_preset_is_burdas_protocol():
    from latentvi.presets import PRESETS

    burda = PRESETS["vae"]["burda"]
    assert burda["batch_size"] == 20 and burda["epochs"] == 3280 and burda["eps"] == 1e-4
    assert burda["lr_schedule"] == "burda" and burda["keep_checkpoints"] == 1
    assert burda["hidden"] == (200, 200) and burda["latent_dim"] == 50
    assert burda["binarize"] == "dynamic" and burda["objective"] == "elbo"
