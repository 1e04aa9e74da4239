"""How fast every long-running command stops on SIGTERM / SIGINT, and that it leaves a checkpoint.

Each command runs as the real program (``python -m latentvi.cli``) into a fresh folder; once its
first metrics row is on disk the signal is sent, and the time until the process has exited is
measured (the checkpoint written on the way out included). Repeated ``--repeats`` times per
command; medians and maxima reported, with the exit codes, the load average and the matmul rate.

    python benchmarks/bench_stop.py --repeats 3 --json benchmarks/results/stop.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
WORLD = ["--preset", "debug", "--eval-episodes", "1", "--no-progress", "--no-tensorboard"]
COMMANDS: dict[str, tuple[list[str], str, int]] = {  # argv, file that shows progress, signal
    "train vae": (["train", "vae", "--dataset", "digits", "--latent-dim", "2", "--hidden", "32",
                   "--epochs", "100000", "--log-every", "5", "--no-progress"],
                  "metrics.jsonl", signal.SIGTERM),
    "rl latent-q (pixel Pendulum)": (["rl", "latent-q", "--env", "Pendulum-v1", "--variant", "vae",
                                      "--preset", "debug", "--steps", "100000", "--no-progress"],
                                     "metrics.jsonl", signal.SIGINT),
    "world-model planet": (["world-model", "train", "--agent", "planet", *WORLD, "--steps",
                            "100000"], "metrics.jsonl", signal.SIGTERM),
    "world-model dreamer": (["world-model", "train", "--agent", "dreamer", *WORLD, "--steps",
                             "100000"], "metrics.jsonl", signal.SIGTERM),
    "world-model slac": (["world-model", "train", "--agent", "slac", *WORLD, "--steps",
                          "100000"], "metrics.jsonl", signal.SIGTERM),
    "world-model e2c": (["world-model", "train", "--agent", "e2c", "--preset", "debug", "--steps",
                         "1000000", "--no-progress"], "metrics.jsonl", signal.SIGTERM),
    "imitate": (["imitate", "--policy", "cvae", "--steps", "3000", "--seeds", "1",
                 "--demos", "20"], "seed-0/metrics.jsonl", signal.SIGTERM),
}  # fmt: skip


def _stop_once(argv: list[str], progress: str, number: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "run"
        env = dict(os.environ, OMP_NUM_THREADS="1", SDL_VIDEODRIVER="dummy")
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
        process = subprocess.Popen(
            [sys.executable, "-m", "latentvi.cli", *argv, "--out", str(out)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 300
        while not (out / progress).is_file() or not (out / progress).read_text().strip():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"{argv[:3]} ended or stalled before its first metrics row")
            time.sleep(0.02)
        sent = time.monotonic()
        process.send_signal(number)
        code = process.wait(timeout=120)
        seconds = time.monotonic() - sent
        checkpoints = sorted(out.rglob("checkpoints/step-*"))
        return {
            "seconds": seconds,
            "exit_code": code,
            "checkpoint": checkpoints[-1].name if checkpoints else None,
            "stderr": process.stderr.read().strip().splitlines(),
        }


def _matmul_gflops() -> float:
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    a @ b
    started = time.perf_counter()
    for _ in range(30):
        a @ b
    return 2 * 512**3 * 30 / (time.perf_counter() - started) / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="command names (keys of COMMANDS)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    report = {"loadavg_before": os.getloadavg(), "matmul_gflops_512": _matmul_gflops()}
    rows = {}
    for name, (argv, progress, number) in COMMANDS.items():
        if args.only and name not in args.only:
            continue
        runs = [_stop_once(argv, progress, number) for _ in range(args.repeats)]
        times = [run["seconds"] for run in runs]
        rows[name] = {
            "signal": signal.Signals(number).name,
            "median_seconds": statistics.median(times),
            "max_seconds": max(times),
            "exit_codes": sorted({run["exit_code"] for run in runs}),
            "checkpoint_left": all(run["checkpoint"] for run in runs),
            # progress logging goes to stderr too; the stop itself is one line, with no traceback
            "no_traceback": not any("Traceback" in "".join(run["stderr"]) for run in runs),
            "last_stderr_line": runs[-1]["stderr"][-1] if runs[-1]["stderr"] else "",
        }
        print(name, json.dumps(rows[name]), flush=True)
    report.update(commands=rows, loadavg_after=os.getloadavg(), repeats=args.repeats)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
