"""PlaNet: plan with the cross-entropy method in the latent space of a learned world model.

Hafner, Lillicrap, Fischer, Villegas, Ha, Lee & Davidson, *Learning Latent Dynamics for Planning
from Pixels* (ICML 2019). The world model (an RSSM with a conv encoder/decoder and a reward head,
:mod:`latentvi.models.ssm`) is fitted to chunks of stored episodes by the sequence ELBO; to act,
the agent filters the current frame into a posterior state and runs CEM (Rubinstein 1999,
:func:`latentvi.control.cem.cem`) over action sequences of length ``plan_horizon``, scoring each
candidate by the sum of rewards the reward head predicts along the prior's imagined rollout. The
first action of the plan is executed (model-predictive control, re-planned every step), with
Gaussian exploration noise while collecting data.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from latentvi.config import option, require
from latentvi.control.cem import cem
from latentvi.models.ssm import RSSMConfig, State
from latentvi.rl.world_model_agent import ModelTrainingConfig, WorldModelAgent

__all__ = ["PlanetAgent", "PlanetConfig"]


@dataclasses.dataclass(frozen=True)
class PlanetConfig:
    """The CEM planner and exploration of PlaNet (paper values as defaults)."""

    plan_horizon: int = option(12, "PlaNet: planning horizon H (agent steps)")
    candidates: int = option(1000, "PlaNet: action sequences drawn per CEM iteration")
    cem_iterations: int = option(10, "PlaNet: CEM iterations per action")
    top_k: int = option(100, "PlaNet: elite sequences the CEM belief is refitted to")
    plan_noise: float = option(0.3, "PlaNet: std of the exploration noise added to the plan")

    def __post_init__(self) -> None:
        for name in ("plan_horizon", "candidates", "cem_iterations", "top_k"):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 1, name, value, "use a positive integer")
        require(
            self.top_k <= self.candidates,
            "top_k",
            self.top_k,
            f"use at most candidates = {self.candidates}",
        )
        require(self.plan_noise >= 0, "plan_noise", self.plan_noise, "use a std >= 0")


class PlanetAgent(WorldModelAgent):
    """A world model and the CEM planner (see the module docstring)."""

    def __init__(
        self, model_config: RSSMConfig, training: ModelTrainingConfig, config: PlanetConfig
    ) -> None:
        super().__init__(model_config, training)
        self.config = config
        self.exploration_noise = config.plan_noise

    def plan(self, state: State, explore: bool) -> Tensor:
        c = self.config
        candidates = state.map(lambda t: t.expand(c.candidates, *t.shape[1:]))

        def predicted_return(actions: Tensor) -> Tensor:  # [N, H, A] -> [N]
            imagined = self.model.rssm.imagine(candidates, actions.transpose(0, 1))  # [H, N]
            features = self.model.rssm.features(imagined)
            return self.model.reward(features).mean.sum(0)

        first = cem(
            predicted_return,
            c.plan_horizon,
            self.action_dim,
            -1.0,
            1.0,
            candidates=c.candidates,
            iterations=c.cem_iterations,
            top_k=c.top_k,
            mean=torch.zeros(c.plan_horizon, self.action_dim, device=state.deter.device),
            std=1.0,
        )[0]
        return first[None]
