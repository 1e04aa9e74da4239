"""Fixed-seed fingerprints of every job, for refactors that must change no numbers by accident.

Each job runs at debug size through the CLI, in this process, into a fresh folder; the
fingerprint is the metrics rows and the summary (wall-clock and throughput fields left out) and a
sha256 of every tensor of the final checkpoint's weights. Record before a change, record after,
compare:

    python benchmarks/fingerprint.py record before.json
    python benchmarks/fingerprint.py record after.json
    python benchmarks/fingerprint.py compare before.json after.json
    python benchmarks/fingerprint.py compare before.json after.json --map-renames  # see below

``--only NAME`` runs a subset. The global random state is seeded before each job (as every job
seeds itself first), so the weights do not depend on what ran before in this process.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

TIMING_WORDS = (
    "wall",
    "second",
    "perf/",
    "time_share",
    "run_dir",
    "files",
    "path",
    "figure",
    "out",
)

WORLD_TINY = ["--preset", "debug", "--eval-episodes", "1", "--no-progress", "--no-tensorboard"]
WORLD_TINY += ["--candidates", "32", "--cem-iterations", "2", "--steps", "400"]

JOBS: dict[str, list[str]] = {
    "vae": ["train", "vae", "--dataset", "digits", "--latent-dim", "2", "--hidden", "32",
            "--max-steps", "20", "--seed", "7", "--no-progress", "--no-tensorboard"],
    "iwae": ["train", "vae", "--dataset", "digits", "--latent-dim", "2", "--hidden", "32",
             "--objective", "iwae", "--num-samples", "5", "--max-steps", "20", "--seed", "3",
             "--no-progress", "--no-tensorboard"],
    "cvae": ["train", "cvae", "--dataset", "digits", "--task", "label", "--max-steps", "20",
             "--eval-examples", "50", "--importance-samples", "20", "--seed", "5",
             "--no-progress", "--no-tensorboard"],
    "imitate": ["imitate", "--policy", "cvae", "--steps", "30", "--seeds", "1", "--episodes", "4",
                "--demos", "20"],
    "latent-q-chain": ["rl", "latent-q", "--env", "latentvi/PixelChain-v0", "--variant", "vae",
                       "--preset", "debug", "--frame-stack", "2", "--action-repeat", "1",
                       "--steps", "150", "--no-progress", "--no-tensorboard"],
    "latent-q-state": ["rl", "latent-q", "--env", "Pendulum-v1", "--variant", "state",
                       "--preset", "debug", "--steps", "400", "--no-progress",
                       "--no-tensorboard"],
    "planet": ["world-model", "train", "--agent", "planet", *WORLD_TINY],
    "dreamer": ["world-model", "train", "--agent", "dreamer", *WORLD_TINY],
    "slac": ["world-model", "train", "--agent", "slac", *WORLD_TINY],
    "e2c": ["world-model", "train", "--agent", "e2c", "--preset", "debug", "--steps", "4",
            "--transitions", "256", "--trials", "1", "--no-progress"],
    "vi": ["vi", "--steps", "60", "--num-points", "50", "--batch-size", "50", "--probe-draws", "20",
           "--refine-steps", "20", "--eval-every", "30"],
}  # fmt: skip


def _clean(value):
    if isinstance(value, dict):
        return {
            k: _clean(v)
            for k, v in value.items()
            if k != "time" and not any(w in k for w in TIMING_WORDS)
        }
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, float):
        return float(f"{value:.12g}")
    return value


def _tensor_hashes(run: Path) -> dict[str, str]:
    from safetensors.torch import load_file

    files = sorted(run.rglob("model.safetensors"))
    if not files:
        return {}
    latest = max(files, key=lambda p: (p.parent.name.startswith("step-"), p.stat().st_mtime))
    tensors = load_file(str(latest))
    return {
        name: hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:16]
        for name, t in sorted(tensors.items())
    }


def _job(argv: list[str]) -> dict:
    import contextlib
    import io

    from latentvi.cli import main
    from latentvi.train.rng import seed_everything

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "run"
        argv = [*argv, "--out", str(out)]
        if argv[0] != "imitate":
            argv.append("--json")
        seed_everything(int(argv[argv.index("--seed") + 1]) if "--seed" in argv else 0)
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            code = main(argv)
        result: dict = {"exit": code}
        for name in ("metrics.jsonl",):
            path = out / name
            if path.is_file():
                rows = [json.loads(line) for line in path.read_text().splitlines() if line]
                result[name] = _clean(rows)
        for name in ("summary.json", "results.json", "curve.csv"):
            path = out / name
            if path.is_file():
                text = path.read_text()
                result[name] = (
                    _clean(json.loads(text))
                    if name.endswith(".json")
                    else [row.split(",")[:4] for row in text.splitlines()]
                )
        result["weights"] = _tensor_hashes(out)
        return result


def record(path: str, only: list[str] | None) -> None:
    results = {}
    for name, argv in JOBS.items():
        if only and name not in only:
            continue
        print(f"{name} ...", file=sys.stderr, flush=True)
        try:
            results[name] = _job(argv)
        except BaseException as error:
            results[name] = {"crash": f"{type(error).__name__}: {error}"[:300]}
        print(f"{name}: {str(results[name])[:120]}", file=sys.stderr, flush=True)
    Path(path).write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


# Deliberate renames since the first record (the one TensorBoard tag scheme): metric key -> new key
# ("vae/NAME" -> "train/vae_NAME" too), and config keys added since. ``compare --map-renames``
# applies them to the older record, so that only values and weights are compared.
RENAMED_METRICS = {"kl": "train/kl", "elbo": "train/elbo", "loss": "loss/total"}
ADDED_CONFIG_KEYS = ("progress",)
# Metrics added since (diagnosis scalars that change no arithmetic): dropped from both records.
ADDED_METRICS = (
    "train/critic_value",
    "train/lambda_return_p05",
    "train/lambda_return_p95",
    "train/action_saturation",
)


def _renamed(value, metrics: bool):
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in ADDED_CONFIG_KEYS or (metrics and key in ADDED_METRICS):
                continue
            if metrics:
                key = (
                    "train/vae_" + key[4:]
                    if key.startswith("vae/")
                    else RENAMED_METRICS.get(key, key)
                )
            out[key] = _renamed(item, metrics)
        return out
    if isinstance(value, list):
        return [_renamed(item, metrics) for item in value]
    return value


def compare(before: str, after: str, map_renames: bool = False) -> int:
    a, b = json.loads(Path(before).read_text()), json.loads(Path(after).read_text())
    if map_renames:
        a = {
            job: {k: _renamed(v, k == "metrics.jsonl") for k, v in r.items()}
            for job, r in a.items()
        }
        b = {
            job: {k: _renamed(v, k == "metrics.jsonl") for k, v in r.items()}
            for job, r in b.items()
        }
    differ = 0
    for name in sorted(set(a) | set(b)):
        if a.get(name) == b.get(name):
            print(f"{name}: identical")
            continue
        differ += 1
        left, right = a.get(name, {}), b.get(name, {})
        keys = sorted(k for k in set(left) | set(right) if left.get(k) != right.get(k))
        print(f"{name}: DIFFERS in {keys}")
    return 1 if differ else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("path")
    rec.add_argument("--only", nargs="*")
    cmp_ = sub.add_parser("compare")
    cmp_.add_argument("before")
    cmp_.add_argument("after")
    cmp_.add_argument("--map-renames", action="store_true", help="apply RENAMED_METRICS first")
    args = parser.parse_args()
    if args.command == "record":
        record(args.path, args.only)
        return 0
    return compare(args.before, args.after, args.map_renames)


if __name__ == "__main__":
    raise SystemExit(main())
