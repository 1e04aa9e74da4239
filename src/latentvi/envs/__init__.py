"""Every environment and wrapper latentvi ships.

- :mod:`latentvi.envs.pixels`: rendered-frame observations, action repeat, frame stacks,
  :func:`~latentvi.envs.pixels.make_env` for any Gymnasium id;
- :mod:`latentvi.envs.chain`: the pixel chain toy task; :mod:`latentvi.envs.pendulum`:
  Pendulum-v1's equations as functions; :mod:`latentvi.envs.pendulum_pixels`: the pixel pendulum
  whose state can be set (E2C's); :mod:`latentvi.envs.dmc`: DeepMind Control from pixels;
- :mod:`latentvi.envs.tasks`: the 2-D imitation tasks; :mod:`latentvi.envs.demos`: their
  scripted demonstrators; :mod:`latentvi.envs.navigation`: pixel 2-D point navigation to a fixed
  goal (SOLAR's task).

:func:`register` is the one function that puts every ``latentvi/`` id into Gymnasium's registry
(idempotent). Importing this package calls it, as Gymnasium's convention for third-party
environments asks, so after ``import latentvi.envs`` (or with the id written
``"latentvi.envs:latentvi/PixelChain-v0"``, which imports it) ``gymnasium.make`` finds every id::

    import gymnasium as gym
    import latentvi.envs  # noqa: F401 (registers the latentvi/ ids)

    env = gym.make("latentvi/Obstacle-v0", render_mode="rgb_array")

The ids: ``latentvi/Obstacle-v0`` and ``latentvi/Passages-v0`` (imitation tasks),
``latentvi/PixelChain-v0`` and ``latentvi/PixelChainContinuous-v0`` (the pixel chain),
``latentvi/PointNav-v0`` (2-D point navigation from pixels).
"""

from latentvi.envs.navigation import register_navigation
from latentvi.envs.pixels import make_env, register_toy_envs
from latentvi.envs.tasks import TASKS, make_task, register_envs


def register() -> None:
    """Register every ``latentvi/`` Gymnasium id (the imitation tasks, the pixel chain and the
    point navigation)."""
    register_envs()
    register_toy_envs()
    register_navigation()


__all__ = ["TASKS", "make_env", "make_task", "register"]

register()
