"""Peak resident memory of training a VAE on MNIST (one epoch, the default model).

python benchmarks/bench_vae_memory.py [--epochs 1]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from results_io import save_results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/vae_memory.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        command = [
            str(Path(sys.executable).parent / "latentvi"),
            "train", "vae", "--dataset", "mnist", "--epochs", str(args.epochs),
            "--no-progress", "--out", str(Path(folder) / "run"), "--json",
        ]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB
    results = {
        "command": "python " + " ".join(sys.argv),
        "peak_rss_mib": peak_kib / 1024,
        "limit_mib": 2048,
        "within_limit": peak_kib / 1024 < 2048,
    }
    return save_results(args.out, results)


if __name__ == "__main__":
    main()
