"""E2C's latent controllers (latentvi.rl.e2c): how a model sees the upright goal."""

import pytest
import torch

from latentvi.jobs.e2c import preset
from latentvi.models.e2c import E2C
from latentvi.rl.e2c import goal_stability


def test_goal_stability_of_an_identity_model():
    run, model_config = preset("debug")
    model = E2C((2, run.image_size, run.image_size), 1, model_config).eval()
    for parameter in model.transition.parameters():  # h(z) = 0: A = I, B = 0, o = 0, f(z, u) = z
        torch.nn.init.zeros_(parameter)
    stability = goal_stability(model, run)
    assert stability["goal_drift"] == 0.0
    assert stability["goal_eigenvalues"] == pytest.approx([1.0, 1.0, 1.0])
