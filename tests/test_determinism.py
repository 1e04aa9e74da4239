"""The same --seed gives bitwise-identical checkpoints, twice in a row, for every training command.

Each run is its own process (``python -m latentvi.cli ...``): within one process the global random
state left by the first run would hide a command that builds something random before it seeds.
Every tensor of the final checkpoint's ``model.safetensors`` is compared exactly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

# One row per training command at debug size: (name, argv without --out, slow?). Options follow
# the CLI of this tree; rename here when a CLI option changes. Two processes per command take
# 10-30 s on a shared 2-core machine, so all but three are marked slow (`make test-slow`).
COMMANDS: list[tuple[str, list[str], bool]] = [
    ("train-vae", ["train", "vae", "--dataset", "digits", "--latent-dim", "2", "--hidden", "16",
                   "--max-steps", "6", "--seed", "7", "--no-progress", "--no-tensorboard"], False),
    ("train-cvae", ["train", "cvae", "--dataset", "digits", "--task", "label", "--max-steps", "6",
                    "--eval-examples", "20", "--importance-samples", "4", "--seed", "5",
                    "--no-progress", "--no-tensorboard"], True),
    ("imitate", ["imitate", "--policy", "cvae", "--steps", "6", "--seeds", "1", "--episodes", "1",
                 "--demos", "6"], False),
    ("rl-latent-q", ["rl", "latent-q", "--env", "latentvi/PixelChain-v0", "--variant", "vae",
                     "--preset", "debug", "--frame-stack", "2", "--action-repeat", "1",
                     "--steps", "60", "--seed", "3", "--no-progress", "--no-tensorboard"], False),
    ("world-model-planet", ["world-model", "train", "--agent", "planet", "--preset", "debug",
                            "--steps", "200", "--eval-episodes", "1", "--candidates", "8",
                            "--cem-iterations", "1", "--seed", "2", "--no-progress",
                            "--no-tensorboard"], True),
    ("world-model-dreamer", ["world-model", "train", "--agent", "dreamer", "--preset", "debug",
                             "--steps", "200", "--eval-episodes", "1", "--seed", "2",
                             "--no-progress", "--no-tensorboard"], True),
    ("world-model-slac", ["world-model", "train", "--agent", "slac", "--preset", "debug",
                          "--steps", "200", "--eval-episodes", "1", "--seed", "2",
                          "--no-progress", "--no-tensorboard"], True),
    ("world-model-e2c", ["world-model", "train", "--agent", "e2c", "--preset", "debug",
                         "--e2c-steps", "4", "--e2c-transitions", "64", "--e2c-trials", "1",
                         "--seed", "4", "--no-progress"], True),
]  # fmt: skip

SRC = Path(__file__).resolve().parents[1] / "src"


def _weights(run: Path) -> dict:
    """The tensors of every model.safetensors under the run (its checkpoints), by path."""
    files = sorted(run.rglob("model.safetensors"), key=lambda p: (p.parent.name, str(p)))
    assert files, f"{run} holds no model.safetensors"
    return {str(path.relative_to(run)): load_file(str(path)) for path in files}


def _run(argv: list[str], out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.setdefault("SDL_VIDEODRIVER", "dummy")
    completed = subprocess.run(
        [sys.executable, "-m", "latentvi.cli", *argv, "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return _weights(out)


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(argv, id=name, marks=[pytest.mark.slow] if slow else [])
        for name, argv, slow in COMMANDS
    ],
)
def test_same_seed_gives_identical_checkpoints_in_separate_processes(argv, tmp_path):
    first = _run(argv, tmp_path / "first")
    second = _run(argv, tmp_path / "second")
    assert first.keys() == second.keys()
    for path, tensors in first.items():
        assert tensors.keys() == second[path].keys(), path
        differing = [
            name for name, tensor in tensors.items() if not tensor.equal(second[path][name])
        ]
        assert not differing, f"{path}: tensors differ between two runs: {differing[:5]}"
