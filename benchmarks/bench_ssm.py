"""RSSM world models: open-loop prediction on the moving-dot task, and update throughput.

``open-loop``: for each latent variant (Gaussian; categorical; Gaussian + latent overshooting D = 3;
Gaussian + KL balancing α = 0.8) train a :class:`~latentvi.models.ssm.WorldModel` on 16×16 moving-dot
sequences (:func:`latentvi.data.moving_dot.moving_dot`, 4×4 dot, T = 16, batch 16, Adam 3e-3,
``--updates`` updates, fixed σ = 0.1 pixel likelihood, free nats 1), then predict ``--horizon``
frames open loop from 4 context frames on 256 fresh sequences. Reports the per-step mean squared
pixel error (pixels in [0, 1]) against two baselines measured on the same frames: the data's mean
frame (the best constant) and the last context frame (no motion).

``throughput``: seconds per world-model update (loss, backward, Adam step) at two model sizes —
the world-model CLI's ``debug`` (32×32 grey, conv 8-16, deter 32, stoch 8, batch 4 × 16 steps) and
``default`` (64×64 grey, conv 16-32-64-128, deter 100, stoch 16, hidden 100, batch 16 × 32 steps)
presets — against the same update with the conv weights in the plain (not channels-last) memory
layout, and the share of it spent in the recurrent part alone (the RSSM's observe + KL on
precomputed embeddings, forward and backward), measured interleaved in one process.

    python benchmarks/bench_ssm.py open-loop [--updates 1500] [--horizon 20] [--seed 0] [--variants ...]
    python benchmarks/bench_ssm.py plot        # per-step error figure from the open-loop JSON
    python benchmarks/bench_ssm.py throughput [--repeats 5]

``open-loop`` also writes a strip per variant: the first 4 test sequences, true frames over
predicted ones, context then the horizon.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.distributions import kl_divergence

from latentvi.data.moving_dot import moving_dot
from latentvi.models.ssm import RSSMConfig, WorldModel
from latentvi.plots import plot_image_grid, plt, save_figure
from results_io import save_results

RESULTS = Path(__file__).parent / "results"

SMALL = {
    "action_dim": 2,
    "obs_shape": (1, 16, 16),
    "channels": (16, 32),
    "deter_dim": 64,
    "stoch_dim": 8,
    "hidden": 64,
    "free_nats": 1.0,
    "obs_std": 0.1,
}
VARIANTS = {
    "gaussian": {},
    "categorical": {"classes": 8},
    "gaussian+overshooting": {"overshooting": 3},
    "gaussian+balance": {"kl_balance": 0.8},
}
PRESETS = {
    "debug": (
        {"obs_shape": (1, 32, 32), "channels": (8, 16), "deter_dim": 32, "stoch_dim": 8,
         "hidden": 32},
        (16, 4),
    ),
    "default": (
        {"obs_shape": (1, 64, 64), "channels": (16, 32, 64, 128), "deter_dim": 100,
         "stoch_dim": 16, "hidden": 100},
        (32, 16),
    ),
}  # fmt: skip


def machine(threads: int) -> dict:
    return {
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{threads} thread(s)",
        "load_average": os.getloadavg(),
    }


def open_loop(arguments) -> None:
    results = {**machine(arguments.threads), "updates": arguments.updates, "variants": {}}
    test = moving_dot(4 + arguments.horizon, 256, torch.Generator().manual_seed(10_000))
    obs, actions, _ = test
    frames = obs.float() / 255
    future = frames[4:]
    mean_error = (frames.mean((0, 1)) - future).square().mean((1, 2, 3, 4))
    still_error = (frames[3] - future).square().mean((1, 2, 3, 4))
    results["baseline_mean_frame_per_step"] = mean_error.tolist()
    results["baseline_last_frame_per_step"] = still_error.tolist()
    names = arguments.variants.split(",") if arguments.variants else list(VARIANTS)
    for name in names:
        overrides = VARIANTS[name]
        torch.manual_seed(arguments.seed)
        generator = torch.Generator().manual_seed(arguments.seed)
        model = WorldModel(RSSMConfig(**{**SMALL, **overrides}))
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        start = time.perf_counter()
        for _ in range(arguments.updates):
            batch = moving_dot(16, 16, generator)
            loss, metrics, _ = model.loss(*batch)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 100.0)
            optimizer.step()
        seconds = time.perf_counter() - start
        predicted = model.open_loop(obs[:4], actions[:4], actions[4:])
        error = (predicted - future).square().mean((1, 2, 3, 4))
        results["variants"][name] = {
            "config": overrides,
            "train_seconds": seconds,
            "final_metrics": metrics,
            "error_per_step": error.tolist(),
            "mean_error": error.mean().item(),
            "ratio_to_mean_frame": (error.mean() / mean_error.mean()).item(),
            "ratio_to_last_frame": (error.mean() / still_error.mean()).item(),
            "steps_below_half_mean_frame": int((error < 0.5 * mean_error).sum()),
        }
        print(name, results["variants"][name]["ratio_to_mean_frame"], seconds, flush=True)
        context_and_predicted = torch.cat([frames[:4, :4], predicted[:, :4]])  # (T, 4, C, H, W)
        strip = torch.stack([frames[:, :4], context_and_predicted], 2)  # (T, 4, 2, C, H, W)
        plot_image_grid(  # rows: sequence 1 true, sequence 1 predicted, sequence 2 true, ...
            strip.permute(1, 2, 0, 3, 4, 5).reshape(-1, *strip.shape[3:]),
            RESULTS / f"ssm_open_loop_strip_{name}_seed{arguments.seed}.png",
            f"{name}: true (odd rows) / open-loop from 4 context frames (even rows)",
            columns=strip.shape[0],
        )
    results["load_average_end"] = os.getloadavg()
    suffix = "" if names == list(VARIANTS) else "_" + "_".join(names)
    save_results(RESULTS / f"ssm_open_loop_seed{arguments.seed}{suffix}.json", results)


def plot(arguments) -> None:
    """Per-step open-loop error of each variant and the two baselines, from the JSON."""
    results = json.loads((RESULTS / f"ssm_open_loop_seed{arguments.seed}.json").read_text())
    figure, axis = plt.subplots(figsize=(7, 4))
    for name, variant in results["variants"].items():
        errors = variant["error_per_step"]
        axis.plot(range(1, len(errors) + 1), errors, label=name)
    for key, label in (
        ("baseline_mean_frame_per_step", "mean frame"),
        ("baseline_last_frame_per_step", "last context frame"),
    ):
        errors = results[key]
        axis.plot(range(1, len(errors) + 1), errors, "--", label=label)
    axis.set_xlabel("steps predicted open loop")
    axis.set_ylabel("mean squared pixel error (pixels in [0, 1])")
    axis.set_title(f"moving dot 16x16, {results['updates']} updates, seed {arguments.seed}")
    axis.legend()
    save_figure(figure, RESULTS / f"ssm_open_loop_seed{arguments.seed}.png")


def measure_preset(sizes: dict, steps: int, batch: int, repeats: int) -> dict:
    """Median seconds of one full update (channels-last conv layout, the default, and the plain
    layout, on copies of the same weights) and of the recurrent part alone, interleaved."""
    torch.manual_seed(0)
    model = WorldModel(RSSMConfig(action_dim=1, **sizes))
    plain = copy.deepcopy(model)
    plain.set_channels_last(False)
    optimizers = {id(m): torch.optim.Adam(m.parameters(), lr=1e-3) for m in (model, plain)}
    obs = torch.randint(0, 256, (steps, batch, *sizes["obs_shape"]), dtype=torch.uint8)
    actions, rewards = torch.randn(steps, batch, 1), torch.randn(steps, batch)
    embed = torch.randn(steps, batch, model.embed_dim)

    def update(world_model):
        loss, _, _ = world_model.loss(obs, actions, rewards)
        optimizer = optimizers[id(world_model)]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def recurrent():
        _, _, q, p = model.rssm.observe(embed, actions)
        kl_divergence(q, p).mean().backward()

    functions = {
        "update": lambda: update(model),
        "update_plain_layout": lambda: update(plain),
        "recurrent": recurrent,
    }
    for function in functions.values():  # warm-up
        function()
    times = {key: [] for key in functions}
    for _ in range(repeats):  # interleaved
        for key, function in functions.items():
            start = time.perf_counter()
            function()
            times[key].append(time.perf_counter() - start)
    median = {key: statistics.median(values) for key, values in times.items()}
    return {
        "sizes": sizes,
        "sequence_length": steps,
        "batch": batch,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds_per_update_median": median["update"],
        "updates_per_second": 1 / median["update"],
        "plain_layout_seconds_median": median["update_plain_layout"],
        "channels_last_over_plain": median["update"] / median["update_plain_layout"],
        "recurrent_seconds_median": median["recurrent"],
        "recurrent_share": median["recurrent"] / median["update"],
        "all_seconds": times,
    }


def throughput(arguments) -> None:
    results = {**machine(arguments.threads), "presets": {}}
    for name, (sizes, (steps, batch)) in PRESETS.items():
        results["presets"][name] = measure_preset(sizes, steps, batch, arguments.repeats)
        print(name, results["presets"][name]["seconds_per_update_median"], flush=True)
    results["load_average_end"] = os.getloadavg()
    save_results(RESULTS / "ssm_throughput.json", results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("open-loop", "plot", "throughput"))
    parser.add_argument(
        "--variants", default="", help=f"comma-separated subset of {list(VARIANTS)}"
    )
    parser.add_argument("--updates", type=int, default=1500)
    parser.add_argument("--horizon", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    {"open-loop": open_loop, "plot": plot, "throughput": throughput}[arguments.mode](arguments)


if __name__ == "__main__":
    main()
