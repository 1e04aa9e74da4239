"""latentvi's own training epoch, two source trees side by side (e.g. before and after a change).

Each round starts one process per tree, alternately, so that machine load affects both alike;
each process trains the speed benchmark's VAE (784-200-200-50, batch 100, dynamically binarized
MNIST, 1 thread) for one warm-up epoch and one timed epoch of ``--examples`` images through
``latentvi.train.fit``, with fit's default optimizer and with ``Adam(fused=True)``, and reports
CPU seconds (``time.process_time``). Medians over the rounds.

    git archive <old commit> src | tar -x -C /tmp/old
    python benchmarks/bench_vae_speed_before_after.py --before /tmp/old/src --after src
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

OPTIMIZERS = ("fit's default", "Adam(fused=True)")


def child(examples: int) -> dict[str, float]:
    """Runs inside the process of one source tree: CPU seconds of one epoch per optimizer."""
    import torch

    from latentvi.data import Batches, load_dataset
    from latentvi.models.vae import VAE, VAEConfig
    from latentvi.train import TrainConfig, fit

    torch.set_num_threads(1)
    images = load_dataset("mnist", "train").images[:examples]
    batches = Batches(images, batch_size=100, binarize="dynamic")
    config = TrainConfig(epochs=1, progress=False, tensorboard=False, log_every=10**9)

    def epoch(model, factory) -> None:
        # Not Batches.make_batches: the trees compared may predate it.
        fit(
            model,
            lambda epoch, generator, start=0: batches.iterate(generator, start=start),
            batches.num_batches,
            config,
            optimizer_factory=factory,
        )

    seconds = {}
    for name in OPTIMIZERS:
        torch.manual_seed(0)
        model = VAE((1, 28, 28), VAEConfig(latent_dim=50, hidden=(200, 200)))
        factory = None
        if name != OPTIMIZERS[0]:
            factory = lambda m: torch.optim.Adam(m.parameters(), 1e-3, fused=True)  # noqa: E731
        epoch(model, factory)  # warm-up
        started = time.process_time()
        epoch(model, factory)
        seconds[name] = time.process_time() - started
    return seconds


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the src folder of the older tree")
    parser.add_argument("--after", default="src", help="the src folder of the newer tree")
    parser.add_argument("--examples", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="benchmarks/results/vae_speed_before_after.json")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.examples)))
        return {}
    trees = {"before": str(Path(args.before).resolve()), "after": str(Path(args.after).resolve())}
    load_at_start = list(os.getloadavg())
    times: dict[str, dict[str, list[float]]] = {t: {o: [] for o in OPTIMIZERS} for t in trees}
    for _ in range(args.rounds):
        for tree, source in trees.items():
            env = {**os.environ, "PYTHONPATH": source, "OMP_NUM_THREADS": "1"}
            command = [sys.executable, __file__, "--child", "--before", "-", "--examples"]
            output = subprocess.run(
                [*command, str(args.examples)], env=env, check=True, capture_output=True, text=True
            ).stdout
            for name, value in json.loads(output.strip().splitlines()[-1]).items():
                times[tree][name].append(value)
    medians = {t: {o: statistics.median(v) for o, v in d.items()} for t, d in times.items()}
    results = {
        "command": "python " + " ".join(sys.argv),
        "trees": trees,
        "examples": args.examples,
        "machine": {
            "cores": os.cpu_count(),
            "threads": 1,
            "load_average_at_start": load_at_start,
            "load_average_at_end": list(os.getloadavg()),
        },
        "cpu_seconds_all": times,
        "cpu_seconds_median": medians,
        "after_is_faster_by": {o: medians["before"][o] / medians["after"][o] for o in OPTIMIZERS},
    }
    from results_io import save_results

    return save_results(args.out, results)


if __name__ == "__main__":
    main()
