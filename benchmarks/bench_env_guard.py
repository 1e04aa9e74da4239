"""What the environment loop's divergence and memory checks cost (RELIABILITY.md).

- ``MetricGuard.exploded`` on a typical update's metrics, beside one update of the smallest
  agent the loop runs (latent-Q, debug preset, on the pixel chain);
- the weight check before a checkpoint (``largest_weight``) and the meta-device estimate of a
  run's agent at start (``meta_build`` + ``network_bytes``) for latent-Q debug and the default
  Dreamer and SLAC agents on 64×64 RGB frames.

Medians of 7 repeats (5 for the large agents), one thread.

    python benchmarks/bench_env_guard.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from latentvi.jobs.latent_q import RunConfig, make_run_env
from latentvi.jobs.world_model import AGENTS
from latentvi.memory import meta_build, network_bytes
from latentvi.models.ssm import RSSMConfig
from latentvi.presets import PRESETS
from latentvi.rl.latent_q import LatentQAgent, LatentQConfig
from latentvi.rl.world_model_agent import ModelTrainingConfig
from latentvi.train.env_schedules import ReplayStorage, random_action
from latentvi.train.step import WARMUP_STEPS, MetricGuard, largest_weight


def per_call(function, calls: int, repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            function()
        times.append((time.perf_counter() - started) / calls)
    return statistics.median(times)


def latent_q_debug():
    debug = PRESETS["latent-q"]["debug"]
    fields = LatentQConfig.__dataclass_fields__
    config = LatentQConfig(**{k: v for k, v in debug.items() if k in fields})
    run_fields = {k: v for k, v in debug.items() if k in RunConfig.__dataclass_fields__}
    run = RunConfig(**run_fields, env="latentvi/PixelChain-v0", frame_stack=1, action_repeat=1,
                    out="unused")  # fmt: skip
    env = make_run_env(run, True)
    agent = LatentQAgent(config, env.observation_space, env.action_space)
    storage = ReplayStorage(2000, 1)
    storage.open(env, None, 0)
    generator = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    storage.start(obs)
    for _ in range(300):
        action = random_action(env.action_space, generator)
        obs, reward, terminated, truncated, _ = env.step(action)
        storage.add(action, reward, obs, terminated, truncated)
        if terminated or truncated:
            obs, _ = env.reset()
            storage.start(obs)
    return agent, storage.sample(config.batch_size), config.batch_size


def main() -> None:
    torch.set_num_threads(1)
    metrics = {"loss/vae_recon": 1.0, "loss/vae_kl": 0.2, "train/vae_elbo": -1.2, "loss/td": 0.3,
               "train/q": -2.0, "loss/total": 3.0, "train/model_grad_norm": 10.0, "loss/kl": 1.0}  # fmt: skip
    guard = MetricGuard()
    for _ in range(WARMUP_STEPS):
        guard.exploded(metrics)
    check = per_call(lambda: guard.exploded(metrics), 20_000)
    print(f"MetricGuard.exploded, 8 metrics (5 watched): {check * 1e6:.2f} us per update")
    agent, batch, batch_size = latent_q_debug()
    update = per_call(lambda: agent.update(batch), 50)
    print(f"latent-Q debug update (batch {batch_size}): {update * 1e3:.1f} ms; "
          f"the guard is {check / update:.3%} of it")  # fmt: skip
    weights = per_call(lambda: largest_weight(agent.named_parameters()), 200)
    count = sum(p.numel() for p in agent.parameters())
    print(f"weight check, latent-Q debug ({count} weights): {weights * 1e3:.2f} ms")
    model = RSSMConfig(action_dim=1, obs_shape=(3, 64, 64))
    for name in ("dreamer", "slac"):
        config, factory = AGENTS[name]

        def build(factory=factory, config=config):
            return factory(model, ModelTrainingConfig(), config())

        estimate = per_call(lambda build=build: network_bytes(meta_build(build)), 1, 5)
        size = network_bytes(meta_build(build))
        agent = build()
        weights = per_call(lambda agent=agent: largest_weight(agent.named_parameters()), 1, 5)
        count = sum(p.numel() for p in agent.parameters())
        print(f"{name} default, 64x64 RGB ({count} weights): estimate at start "
              f"{estimate * 1e3:.1f} ms ({size / 1e6:.1f} MB to train), weight check "
              f"{weights * 1e3:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
