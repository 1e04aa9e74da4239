"""Every environment and wrapper latentvi ships.

- :mod:`latentvi.envs.pixels`: rendered-frame observations, action repeat, frame stacks,
  :func:`~latentvi.envs.pixels.make_env` for any Gymnasium id;
- :mod:`latentvi.envs.chain`: the pixel chain toy task; :mod:`latentvi.envs.pendulum`:
  Pendulum-v1's equations as functions; :mod:`latentvi.envs.pendulum_pixels`: the pixel pendulum
  whose state can be set (E2C's); :mod:`latentvi.envs.dmc`: DeepMind Control from pixels;
- :mod:`latentvi.envs.tasks`: the 2-D imitation tasks; :mod:`latentvi.envs.demos`: their
  scripted demonstrators.

:func:`register` puts every ``latentvi/`` id into Gymnasium's registry (idempotent); nothing is
registered at import. ``make_env`` and ``make_task`` call it themselves.
"""

from latentvi.envs.pixels import make_env
from latentvi.envs.tasks import TASKS, make_task


def register() -> None:
    """Register every ``latentvi/`` Gymnasium id (the imitation tasks and the pixel chain)."""
    from latentvi.envs.pixels import register_toy_envs
    from latentvi.envs.tasks import register_envs

    register_envs()
    register_toy_envs()


__all__ = ["TASKS", "make_env", "make_task", "register"]
