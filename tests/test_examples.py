"""Every script in examples/ runs, at a small size, in a fresh process, on this tree's sources.

Each test checks what the script is for, not only that it exits: bounds below the exact answer, a
metrics table that matches the run's file, episodes a demonstrator finishes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run(*args: str, cwd: Path = ROOT) -> str:
    """``python *args`` with this tree's src first on the path (one thread); returns stdout."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_every_example_has_a_test():
    tested = {
        "vi_on_your_own_data.py",
        "read_metrics.py",
        "gym_environment.py",
        "vae_own_networks.py",
    }
    assert {path.name for path in EXAMPLES.glob("*.py")} == tested


def test_vi_on_your_own_data():
    out = run(str(EXAMPLES / "vi_on_your_own_data.py"), "--n", "200", "--steps", "300", "--json")
    results = json.loads(out)
    exact = results["log_px_exact"]
    # ELBO ≤ E[importance estimate] ≤ log p(x) (Burda et al. 2016): the estimate with the
    # encoder's q lies between that q's ELBO and the exact value (up to 4 standard errors).
    estimate, stderr = results["log_px_importance"], results["log_px_importance_stderr"]
    assert results["elbo_amortized"] - 4 * stderr < estimate < exact + 4 * stderr
    # Both ELBOs are lower bounds (100 draws per example: Monte Carlo error ≪ 0.05 nats) and,
    # even after a short fit, within a nat or two of log p(x).
    for name in ("per_datapoint", "amortized"):
        assert -0.05 < results[f"gap_{name}"] < 2.0
        assert results[f"elbo_{name}"] == pytest.approx(exact - results[f"gap_{name}"])


def test_read_metrics(tmp_path):
    run_dir = tmp_path / "digits"
    run(
        "-m", "latentvi.cli", "train", "vae", "--dataset", "digits", "--latent-dim", "2",
        "--hidden", "16", "--max-steps", "12", "--no-progress", "--out", str(run_dir),
    )  # fmt: skip
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    plot = tmp_path / "curve.png"
    out = run(str(EXAMPLES / "read_metrics.py"), str(run_dir), "--plot", str(plot))
    assert out.splitlines()[0] == f"{len(rows)} rows, steps {rows[0]['step']} to {rows[-1]['step']}"
    # Each key's printed value is the last one logged for it.
    printed = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:] if "(step" in line}
    last = {key: value for row in rows for key, value in row.items()}
    assert printed and set(printed) == set(last) - {"step", "time"}
    for key, shown in printed.items():
        if isinstance(last[key], float):
            assert float(shown) == pytest.approx(last[key], abs=1e-4)
    assert plot.stat().st_size > 1000


def test_gym_environment(tmp_path):
    frame = tmp_path / "frame.png"
    out = run(str(EXAMPLES / "gym_environment.py"), "--episodes", "2", "--out", str(frame))
    episodes = [line for line in out.splitlines() if line.startswith("episode")]
    assert len(episodes) == 2 and all("success True" in line for line in episodes)
    assert "frame: (96, 96, 3) uint8" in out and frame.stat().st_size > 100


def test_vae_own_networks(tmp_path):
    out = run(str(EXAMPLES / "vae_own_networks.py"), "--out", str(tmp_path / "run"),
              "--steps", "150")  # fmt: skip
    first, second = out.strip().splitlines()[-2:]
    elbo, log_px = float(first.split()[2]), float(first.split()[9])
    assert -64 * 0.6932 < elbo <= log_px < 0  # better than coin flips; ELBO below log p(x)
    assert second.startswith("reopened: same posterior means True")
    assert float(second.split()[-1]) == elbo  # the reopened model gives the same bound
    assert not (tmp_path / "run" / "run.json").exists()  # nothing of the architecture saved
