"""Agents, one file each, all with one protocol: ``act(obs)``, ``update(batch) -> metrics``, and
their state for checkpoints.

- :mod:`latentvi.rl.latent_q`: Q-learning on a VAE latent of pixels (double DQN or SAC on z);
  :mod:`latentvi.rl.sac` and :mod:`latentvi.rl.dqn` are its learners.
- :mod:`latentvi.rl.planet`, :mod:`latentvi.rl.dreamer`, :mod:`latentvi.rl.slac`: agents on a
  learned RSSM world model (:mod:`latentvi.rl.world_model_agent` holds what they share).
- :mod:`latentvi.rl.e2c`: controllers in the latent space of an E2C model (iLQR MPC, value
  iteration's greedy policy).
- :mod:`latentvi.rl.solar`: SOLAR, LQR-FLM on local linear-Gaussian dynamics in an SVAE latent space.
- :mod:`latentvi.rl.imitation`: imitation policies (BC, CVAE, chunk CVAE, latent plans).

Environments live in :mod:`latentvi.envs`, replay and episode storage in :mod:`latentvi.data`,
LQR, iLQR, value iteration and CEM in :mod:`latentvi.control`.
"""
