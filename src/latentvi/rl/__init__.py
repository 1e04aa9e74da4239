"""Reinforcement and imitation learning: pixel environments, replay, Gymnasium tasks, demonstrators,
and one file per agent or policy family.

Importing this package registers the ``latentvi/`` imitation tasks (see
:func:`latentvi.rl.envs.register_envs`), the convention for third-party Gymnasium tasks; the pixel
chain tasks register themselves when :func:`latentvi.rl.pixels.make_env` first needs them.
"""

from latentvi.rl.envs import TASKS, make_task, register_envs

register_envs()

__all__ = ["TASKS", "make_task", "register_envs"]
