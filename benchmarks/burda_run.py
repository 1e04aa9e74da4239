"""Burda et al.'s VAE row, at their protocol, resumable: train, evaluate, keep the weights.

Burda, Grosse & Salakhutdinov (2016), Table 1, VAE with one stochastic layer (784-200-200-50,
tanh, Bernoulli decoder, ELBO with k = 1): batch 20, Adam (β₁ 0.9, β₂ 0.999, ε 1e-4) with their
schedule (3^i epochs at 1e-3·10^(−i/7), i = 0..7: 3280 epochs), dynamically binarized MNIST; the
figure is the test log p(x) estimated with K = 5000 importance samples on all 10,000 test images
(paper: −86.76). The training is ``latentvi train vae --preset burda`` (:mod:`latentvi.presets`);
this script only strings the steps together so that one command, run again and again, finishes
the job on machines that are not kept for long:

1. Train into ``--out`` (default ``benchmarks/burda``), resuming when it already holds a
   checkpoint. The run keeps ONE resumable checkpoint (model, Adam state, schedule position,
   random states; safetensors + JSON, written atomically), replaced every 10 epochs and on
   SIGTERM / SIGINT; resuming from it gives the weights of an uninterrupted run, bit for bit.
2. When the last epoch is done: evaluate (ELBO and log p(x), K = ``--eval-samples``) on the test
   set, write ``--result`` (JSON), export the final weights to ``--pretrained`` (a run folder
   ``latentvi.load`` opens, weights only), and remove the resumable checkpoint.

    python benchmarks/burda_run.py              # start, or continue where it stopped
    python benchmarks/burda_run.py -- --dataset digits --epochs 3   # extra `train vae` options

Exit code: 0 when the figure is written, 143 / 130 when stopped by SIGTERM / SIGINT (run it
again to continue), that of ``latentvi train vae`` when it fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from latentvi import cli
from latentvi.jobs.vae import evaluate_run, load
from latentvi.train import find_latest, read_metrics
from latentvi.train.checkpoint import save_checkpoint
from results_io import save_results

HERE = Path(__file__).resolve().parent


def _state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "state.json").read_text())


def _epochs_done(out: Path) -> tuple[int, int] | None:
    """(epochs finished, epochs of the run) from the latest checkpoint, or None without one."""
    latest = find_latest(out)
    if latest is None:
        return None
    state = _state(latest)
    extra = state.get("extra", state)
    epochs = json.loads((out / "config.json").read_text())["train"]["epochs"]
    return int(extra["epoch"]), int(epochs)


def train(out: Path, extra: list[str]) -> int:
    """``latentvi train vae --preset burda`` into ``out`` (with ``--resume`` when it holds a
    checkpoint); its exit code."""
    argv = ["train", "vae", "--preset", "burda", "--out", str(out), "--no-progress", *extra]
    if find_latest(out) is not None:
        argv.append("--resume")
    print("latentvi " + " ".join(argv), file=sys.stderr)
    return cli.main(argv)


def export_weights(out: Path, pretrained: Path) -> Path:
    """The final weights as a run folder of their own (run.json, config.json and one checkpoint
    of the model's weights, no optimizer state): ``latentvi.load(pretrained)`` opens it."""
    model = load(out)
    step = int(_state(find_latest(out))["step"])
    if pretrained.exists():
        shutil.rmtree(pretrained)
    pretrained.mkdir(parents=True)
    for name in ("run.json", "config.json"):
        shutil.copy2(out / name, pretrained / name)
    config = json.loads((out / "config.json").read_text())
    return save_checkpoint(pretrained, step, model, None, {}, config, keep=1)


def epoch_seconds(out: Path) -> float | None:
    """Median seconds per epoch over the logged training rows (``perf/steps_per_sec``)."""
    rows = [r for r in read_metrics(out) if "perf/steps_per_sec" in r and "train/epoch" in r]
    if not rows:
        return None
    per_epoch = json.loads((out / "config.json").read_text())["resolved"]["num_batches"]
    rates = sorted(r["perf/steps_per_sec"] for r in rows)
    return per_epoch / rates[len(rates) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "burda"), help="the resumable run folder")
    parser.add_argument("--pretrained", default=str(HERE.parent / "examples/pretrained/burda-vae"))
    parser.add_argument("--result", default=str(HERE / "results/burda_vae.json"))
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (1: one core)")
    parser.add_argument("--eval-samples", type=int, default=5000, help="K of the test log p(x)")
    parser.add_argument("--eval-examples", type=int, default=None, help="default: all test images")
    parser.add_argument(
        "--keep-checkpoint", action="store_true", help="keep the resumable checkpoint at the end"
    )
    parser.add_argument("extra", nargs="*", help="more `latentvi train vae` options, after --")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    started = time.perf_counter()
    code = train(out, args.extra)
    if code != 0:
        return code
    done = _epochs_done(out)
    if done is None or done[0] < done[1]:
        print(f"stopped before the last epoch ({done}); run again to continue", file=sys.stderr)
        return 0
    figures = evaluate_run(out, args.eval_samples, n_examples=args.eval_examples, progress=False)
    exported = export_weights(out, Path(args.pretrained))
    per_epoch = epoch_seconds(out)
    results = {
        "command": "python " + " ".join(["benchmarks/burda_run.py", *(argv or sys.argv[1:])]),
        "protocol": "Burda et al. (2016): batch 20, Adam eps 1e-4, their schedule, dynamic "
        "binarization; `latentvi train vae --preset burda`",
        "epochs": done[1],
        "test": figures,
        "paper_log_likelihood": -86.76,
        "epoch_seconds_median": per_epoch,
        "pretrained": str(exported.parent.parent),
        "torch": torch.__version__,
        "threads": args.threads,
        "load_average_at_end": list(os.getloadavg()),
        "seconds_this_invocation": time.perf_counter() - started,
    }
    save_results(args.result, results)
    if not args.keep_checkpoint:  # the figure is in: the resumable state is no longer needed
        shutil.rmtree(out / "checkpoints")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
