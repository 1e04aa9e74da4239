"""Render time per 64×64 frame of DeepMind Control Suite tasks through latentvi.envs.dmc.

For each task: the median over ``--frames`` renders (after 5 warm-up renders) of
``DMCEnv.render()`` with latentvi's fast settings (no shadows, reflections or multisampling) and,
in the same process, with MuJoCo's default visual settings; also the time of one
``env.step`` (physics + frame), and of one agent step at action repeat ``--repeat`` through
``make_env`` (one frame per agent step) against the same wrappers around a pixel ``DMCEnv`` (a
frame at every physics step, as before). MUJOCO_GL is reported (egl unless set).

    python benchmarks/bench_dmc_render.py [--frames 200]
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import numpy as np
import torch

from latentvi.envs.dmc import DMCEnv
from latentvi.envs.pixels import make_env
from results_io import median_seconds, save_results

RESULTS = Path(__file__).parent / "results"
TASKS = (("cartpole", "swingup"), ("reacher", "easy"), ("cheetah", "run"), ("pendulum", "swingup"))


def median_ms(function, repeats: int) -> float:
    """Median milliseconds of ``function()`` after 5 untimed calls."""
    return 1e3 * median_seconds(function, repeats, warmup=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=8, help="action repeat of the agent step")
    arguments = parser.parse_args()
    load_before = os.getloadavg()
    rows = {}
    for domain, task in TASKS:
        env = DMCEnv(domain, task)
        env.reset(seed=0)
        fast = median_ms(env.render, arguments.frames)
        action = np.zeros(env.action_space.shape, np.float32)
        step = median_ms(lambda env=env, action=action: env.step(action), arguments.frames)
        env.close()
        from dm_control import suite  # imported by DMCEnv (after setting MUJOCO_GL)

        plain = suite.load(domain, task, task_kwargs={"random": 0})
        plain.reset()
        slow = median_ms(
            lambda plain=plain: plain.physics.render(64, 64, camera_id=0), arguments.frames
        )
        plain.close()
        agent_step = {}
        for name, kwargs in (("one_frame", None), ("every_physics_step", {"from_pixels": True})):
            env = make_env(f"dmc/{domain}-{task}-v0", pixels=True,
                           action_repeat=arguments.repeat, env_kwargs=kwargs)  # fmt: skip
            env.reset(seed=0)
            action = np.zeros(env.action_space.shape, np.float32)
            agent_step[name] = median_ms(
                lambda env=env, action=action: env.step(action), arguments.frames // 4
            )
            env.close()
        rows[f"{domain}-{task}"] = {
            "render_ms_fast": fast,
            "render_ms_default_settings": slow,
            "speedup": slow / fast,
            "step_with_frame_ms": step,
            f"agent_step_repeat{arguments.repeat}_ms": agent_step["one_frame"],
            f"agent_step_repeat{arguments.repeat}_frame_every_step_ms": agent_step[
                "every_physics_step"
            ],
            "agent_step_speedup": agent_step["every_physics_step"] / agent_step["one_frame"],
        }
    save_results(
        RESULTS / "dmc_render.json",
        {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}",
            "mujoco_gl": os.environ.get("MUJOCO_GL"),
            "frames": arguments.frames,
            "repeat": arguments.repeat,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "tasks": rows,
        },
    )


if __name__ == "__main__":
    main()
