"""Reinforcement and imitation learning: Gymnasium tasks, demonstrators and policies.

Importing this package registers the ``latentvi/`` Gymnasium environments (see
:func:`latentvi.rl.envs.register_envs`), the convention for third-party Gymnasium tasks.
"""

from latentvi.rl.envs import TASKS, make_env, register_envs

register_envs()

__all__ = ["TASKS", "make_env", "register_envs"]
