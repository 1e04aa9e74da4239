"""EM, hard EM, per-datapoint VI, amortized VI and gradient ascent on the exact log p(x): how many
passes over the data and how many seconds each needs to come within 0.01 nats per example of the
maximum likelihood (issue 21).

Runs ``latentvi em`` (:func:`latentvi.jobs.em.run_em`) ``--repeats`` times with the same seed — the
same data, the same start θ₀, the same minibatches and z draws, so the passes are identical and only
the wall time varies — and reports, per method, the passes to the tolerance and the median seconds
(the fitting steps alone; each pass's float64 evaluation of log p(x) is outside the clock). A
matmul rate (256×256 float32, one thread) is measured before and after in the same process and the
load average recorded, so the seconds can be read against what the machine was doing.

Run (one thread, in a CPU slot on the shared box):

    /work/cpu env PYTHONPATH=src .venv/bin/python benchmarks/bench_em.py --passes 500 --repeats 3

Writes ``benchmarks/results/em.json`` and ``benchmarks/results/em-comparison.png`` (the figure of
the last repeat) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from latentvi.jobs.em import EMConfig, run_em
from results_io import save_results

RESULTS = Path(__file__).parent / "results"


def matmul_gflops(size: int = 256, repeats: int = 200) -> float:
    """Median float32 matmul rate, GFLOP/s, on the current thread setting."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(20):
        a @ b
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return 2 * size**3 / statistics.median(times) / 1e9


def cpu_model() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor()
    return next(
        (
            line.split(":", 1)[1].strip()
            for line in text.splitlines()
            if line.startswith("Model name")
        ),
        platform.processor(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--em-mode", default="batch")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    load_before, rate_before = os.getloadavg(), matmul_gflops()
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            config = EMConfig(
                passes=args.passes,
                seed=args.seed,
                lr=args.lr,
                em_mode=args.em_mode,
                out=f"{folder}/run{repeat}",
            )
            runs.append(run_em(config))
        RESULTS.mkdir(exist_ok=True)
        shutil.copyfile(
            Path(folder) / f"run{args.repeats - 1}" / "em.png", RESULTS / "em-comparison.png"
        )
    rate_after, load_after = matmul_gflops(), os.getloadavg()

    summary = {}
    for part in ("ppca", "mixture"):
        rows = {}
        for method in runs[0][part]["fits"]:
            fits = [run[part]["fits"][method] for run in runs]
            passes = {fit["passes_to_tolerance"] for fit in fits}
            reached = [fit["seconds_to_tolerance"] for fit in fits]
            rows[method] = {
                "passes_to_tolerance": fits[0]["passes_to_tolerance"],
                "passes_identical_across_repeats": len(passes) == 1,
                "steps_to_tolerance": fits[0]["steps_to_tolerance"],
                "median_seconds_to_tolerance": None
                if None in reached
                else statistics.median(reached),
                "median_seconds_per_pass": statistics.median(
                    fit["seconds"] / args.passes for fit in fits
                ),
                "final_gap_nats": fits[0]["gap_to_reference"],
                "final_log_marginal": fits[0]["log_marginal"],
            }
            if "noise_variance" in fits[0]:
                rows[method]["noise_variance"] = fits[0]["noise_variance"]
        summary[part] = {
            "reference": runs[0][part]["reference"],
            "reference_log_likelihood": runs[0][part]["reference_log_likelihood"],
            "methods": rows,
        }
    summary["ppca"]["mle_noise_variance"] = runs[0]["ppca"]["mle_noise_variance"]
    results = {
        "config": dataclasses.asdict(
            EMConfig(passes=args.passes, seed=args.seed, lr=args.lr, em_mode=args.em_mode)
        ),
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "tolerance_nats_per_example": runs[0]["config"]["tolerance"],
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "matmul_256_float32_gflops_before": rate_before,
        "matmul_256_float32_gflops_after": rate_after,
        "load_average_before": load_before,
        "load_average_after": load_after,
        **summary,
    }
    save_results(RESULTS / "em.json", results)
    tolerance = results["tolerance_nats_per_example"]
    for part in ("ppca", "mixture"):
        print(f"\n{part}: reference log p(x) = {summary[part]['reference_log_likelihood']:.4f}")
        print(
            f"| method | passes to {tolerance} | steps | median s to {tolerance} | "
            "median ms per pass | gap after all passes (nats) |"
        )
        print("|---|---|---|---|---|---|")
        for method, row in summary[part]["methods"].items():
            seconds = row["median_seconds_to_tolerance"]
            print(
                f"| {method} | {row['passes_to_tolerance'] or 'not reached'} | "
                f"{row['steps_to_tolerance'] or '–'} | "
                f"{'–' if seconds is None else f'{seconds:.3f}'} | "
                f"{1000 * row['median_seconds_per_pass']:.2f} | {row['final_gap_nats']:.2g} |"
            )


if __name__ == "__main__":
    main()
