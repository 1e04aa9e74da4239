"""A latentvi environment through Gymnasium's own ``gym.make``.

``import latentvi.envs`` registers every ``latentvi/`` id (``latentvi/Obstacle-v0``,
``latentvi/Passages-v0``, ``latentvi/PixelChain-v0``, ``latentvi/PixelChainContinuous-v0``).
Here the scripted demonstrator of the obstacle task (a point robot that passes a disc on the left
or the right) drives a few episodes, and the last frame is saved with ``render_mode="rgb_array"``.

    python examples/gym_environment.py --episodes 3 --out obstacle.png
"""

from __future__ import annotations

import argparse

import gymnasium as gym

import latentvi.envs  # noqa: F401  (registers the latentvi/ ids with Gymnasium)
from latentvi.envs.demos import WaypointDemonstrator


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="latentvi/Obstacle-v0", help="a latentvi/ id")
    parser.add_argument("--episodes", type=int, default=3, help="episodes to run")
    parser.add_argument("--out", metavar="PNG", help="save the last episode's final frame")
    args = parser.parse_args(argv)

    env = gym.make(args.env, render_mode="rgb_array")
    task = env.unwrapped.task  # "obstacle" or "passages"
    demonstrator = WaypointDemonstrator(task, noise=0.1, seed=0)
    print(f"{args.env}: observations {env.observation_space}, actions {env.action_space}")
    episodes = []
    for episode in range(args.episodes):
        observation, info = env.reset(seed=episode)
        demonstrator.reset(observation)
        steps, total, done = 0, 0.0, False
        while not done:
            observation, reward, terminated, truncated, info = env.step(
                demonstrator.act(observation)
            )
            steps, total, done = steps + 1, total + float(reward), terminated or truncated
        mode = env.unwrapped.layout.mode_names[info["mode"]] if info["mode"] >= 0 else "none"
        episodes.append({"steps": steps, "return": total, "success": info["success"], "mode": mode})
        print(
            f"episode {episode}: {steps} steps, return {total:.2f}, success {info['success']}, "
            f"mode {mode}"
        )
    frame = env.render()  # [H, W, 3] uint8
    print(f"frame: {frame.shape} {frame.dtype}")
    if args.out:
        import matplotlib.pyplot as plt

        plt.imsave(args.out, frame)
        print(f"wrote {args.out}")
    env.close()
    return episodes


if __name__ == "__main__":
    main()
