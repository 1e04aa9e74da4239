"""Data-parallel training: 2 gloo processes with batch B each against 1 process with batch 2B.

Both runs train the same VAE on MNIST for the same number of epochs from the same seed; with
DistributedDataParallel the gradient of each step is the mean over 2B examples, as in the single
process, so the two should reach the same held-out ELBO (the runs differ only in their random
draws). Reports both ELBOs and both throughputs.

    python benchmarks/bench_vae_ddp.py [--epochs 3] [--batch-size 100]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_io import save_results

BIN = Path(sys.executable).parent


def train(out: Path, batch_size: int, epochs: int, processes: int, threads: int) -> dict:
    command = [
        "train", "vae", "--dataset", "mnist", "--batch-size", str(batch_size),
        "--epochs", str(epochs), "--no-progress", "--no-tensorboard", "--log-every", "100",
        "--valid-examples", "10000", "--out", str(out), "--json",
    ]  # fmt: skip
    if processes == 1:
        launcher = [str(BIN / "latentvi")]
    else:
        launcher = [
            str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={processes}",
            "-m", "latentvi.cli",
        ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    completed = subprocess.run(
        launcher + command, capture_output=True, text=True, env=environment, check=True
    )
    seconds = time.perf_counter() - started
    summary = json.loads(completed.stdout[completed.stdout.index("{") :])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["perf/examples_per_sec"] for r in records if "perf/examples_per_sec" in r]
    return {
        "processes": processes,
        "batch_per_process": batch_size,
        "eval_elbo": summary["metrics"]["eval/elbo"],
        "train_elbo": summary["metrics"]["train/elbo"],
        "steps": summary["steps"],
        "wall_seconds": seconds,
        "examples_per_sec_median": sorted(speeds)[len(speeds) // 2],
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=100, help="B, per process")
    parser.add_argument("--out", default="benchmarks/results/vae_ddp.json")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="latentvi-ddp-"))
    try:
        single = train(folder / "one", 2 * args.batch_size, args.epochs, 1, 2)
        double = train(folder / "two", args.batch_size, args.epochs, 2, 1)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    results = {
        "command": "python " + " ".join(sys.argv),
        "cores": os.cpu_count(),
        "one_process_batch_2B": single,
        "two_processes_batch_B": double,
        "eval_elbo_difference": double["eval_elbo"] - single["eval_elbo"],
        "throughput_ratio_two_over_one": double["examples_per_sec_median"]
        / single["examples_per_sec_median"],
        "units": "ELBO in nats per example on 10,000 test images (binarized once, seed 0)",
    }
    return save_results(args.out, results)


if __name__ == "__main__":
    main()
