"""The E2C pixel-pendulum experiment: data layout, rendering, config errors, a debug run end to end."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from latentvi.envs.pendulum import pendulum_step
from latentvi.envs.pendulum_pixels import PendulumPixels, wrap
from latentvi.jobs.e2c import (
    E2CRunConfig,
    collect_transitions,
    control,
    evaluate_run,
    load_model,
    preset,
    run_e2c,
    start_states,
)
from latentvi.models.e2c import E2C
from latentvi.rl.e2c import latent_controller, value_controller


def test_start_angle_zero_starts_upright():
    theta, velocity = start_states(E2CRunConfig(start_angle=0.0, start_noise=0.1, trials=50), 0)
    assert np.abs(theta).max() <= 0.1 and np.abs(velocity).max() <= 0.1
    theta, _ = start_states(E2CRunConfig(trials=50), 0)
    assert np.abs(theta - math.pi).max() <= 0.2


def test_control_runs_a_given_controller_on_the_encodings():
    """``control(..., controller)``: the controller gets the encoder's means of each step, in
    order, and its actions move the true pendulum — zero torque gives Pendulum-v1's free fall."""
    run = dataclasses.replace(preset("debug")[0], trials=3, episode_steps=6)
    model = E2C((2, run.image_size, run.image_size), 1, preset("debug")[1]).eval()
    seen = []

    def still(z):
        seen.append(z.clone())
        return torch.zeros(z.shape[0], 1)

    result = control(model, run, seed=5, controller=still)
    theta, velocity = start_states(run, 5)
    for t in range(run.episode_steps):
        theta, velocity, _ = pendulum_step(theta, velocity, 0.0, repeat=run.action_repeat)
        np.testing.assert_allclose(result["angles"][:, t], wrap(theta), atol=1e-9)
    assert len(seen) == run.episode_steps and seen[0].shape == (3, model.latent_dim)
    assert np.all(result["torques"] == 0.0)


def test_transitions_share_their_middle_frame_and_follow_the_dynamics():
    run, _ = preset("debug", transitions=64, image_size=32)
    data = collect_transitions(run, seed=0)
    assert data["x"].shape == data["x_next"].shape == (64, 2, 32, 32)
    assert data["u"].shape == (64, 1) and data["u"].abs().max() <= 1
    torch.testing.assert_close(data["x"][:, 1], data["x_next"][:, 0])
    assert (data["theta"].abs() <= math.pi).all()
    assert data["velocity"].abs().max() <= 8.0
    # fast states: the two frames differ (the pendulum moved between them)
    moving = data["velocity"].abs() > 4.0  # |θ̇| > 1.9 throughout the step: moved > 0.19 rad
    assert (data["x"][moving, 0] - data["x"][moving, 1]).abs().sum((-1, -2)).min() > 0


def test_multi_step_data_chains_observations_under_its_actions():
    run, _ = preset("debug", transitions=16, image_size=16, prediction_steps=3)
    data = collect_transitions(run, seed=0)
    assert data["x"].shape == (16, 2, 16, 16) and data["x_next"].shape == (16, 3, 2, 16, 16)
    assert data["u"].shape == (16, 3, 1) and data["u"].abs().max() <= 1
    torch.testing.assert_close(data["x"][:, 1], data["x_next"][:, 0, 0])
    torch.testing.assert_close(data["x_next"][:, :-1, 1], data["x_next"][:, 1:, 0])
    # the newest frame of each x_{t+k} is the pendulum stepped k times from x's state
    pendulum = PendulumPixels(16, run.action_repeat)
    try:
        for i in range(4):
            theta, velocity = float(data["theta"][i]), float(data["velocity"][i])
            for k in range(3):
                torque = 2.0 * float(data["u"][i, k, 0])
                theta, velocity = pendulum.step(theta, velocity, torque)
                expected = 1.0 - pendulum.frame(theta)[0] / 255.0
                np.testing.assert_allclose(data["x_next"][i, k, 1].numpy(), expected, atol=1e-6)
    finally:
        pendulum.close()


def test_upright_share_draws_starts_near_upright():
    run, _ = preset("debug", transitions=200, image_size=16, upright_share=1.0)
    data = collect_transitions(run, seed=0)
    # starts within |θ| < π/4, |θ̇| < 3; one agent step (0.1 s, |θ̈| ≤ 15 + 6) moves them a little
    assert data["theta"].abs().max() < math.pi / 4 + 0.6
    assert data["velocity"].abs().max() < 3.0 + 2.2
    anywhere = collect_transitions(dataclasses.replace(run, upright_share=0.0), seed=0)
    assert (anywhere["theta"].abs() > 2.0).float().mean() > 0.25


def test_bad_options_name_the_field():
    with pytest.raises(ValueError, match="success_steps"):
        E2CRunConfig(episode_steps=10, success_steps=20)
    with pytest.raises(ValueError, match="upright_share"):
        E2CRunConfig(upright_share=1.5)
    with pytest.raises(ValueError, match="zoom"):
        E2CRunConfig(zoom=0)
    with pytest.raises(ValueError, match="controller = 'lqr' is invalid: choose one of mpc"):
        E2CRunConfig(controller="lqr")
    with pytest.raises(ValueError, match="discount"):
        E2CRunConfig(discount=1.0)
    with pytest.raises(ValueError, match="value_actions"):
        E2CRunConfig(value_actions=1)
    with pytest.raises(ValueError, match="preset"):
        preset("huge")
    with pytest.raises(ValueError, match="horizn"):
        preset("debug", horizn=3)


def test_debug_run_end_to_end(tmp_path):
    run, model = preset("debug")
    summary = run_e2c(run, tmp_path, model)
    assert 0.0 <= summary["success_rate"] <= 1.0
    assert summary["trials"] == 2 and summary["successes"] == round(2 * summary["success_rate"])
    for name in ("reconstructions.png", "latent.png", "control.png", "summary.json"):
        assert (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["success_rate"] == summary["success_rate"]
    assert math.isfinite(saved["eval/consistency"])
    assert any((tmp_path / "checkpoints").iterdir())
    # Control again from the saved model: the same trials give the same outcome.
    again = evaluate_run(tmp_path, run, model, tmp_path / "again")
    assert again["final_abs_angle_mean"] == pytest.approx(summary["final_abs_angle_mean"], abs=1e-4)
    assert again["success_rate"] == summary["success_rate"]
    # The default preset's MPC settings (autograd Jacobians, the goal regulator as a second
    # start) run on the same model; it records how the model sees the goal.
    planned = dataclasses.replace(run, linearization="autograd", regulator=True)
    other = evaluate_run(tmp_path, planned, model, tmp_path / "regulated")
    assert 0.0 <= other["success_rate"] <= 1.0
    assert len(other["goal_eigenvalues"]) == model.latent_dim and other["goal_drift"] >= 0
    # The default preset's controller (value iteration over the training latents' box).
    valued = dataclasses.replace(run, controller="value", value_cells=6)
    value = evaluate_run(tmp_path, valued, model, tmp_path / "value")
    assert 0.0 <= value["success_rate"] <= 1.0 and value["controller_setup_seconds"] > 0
    assert value["run_config"]["controller"] == "value"
    with pytest.raises(ValueError, match="latents"):
        latent_controller(load_model(tmp_path, valued, model), valued)
    with pytest.raises(ValueError, match="value_cells"):  # a 5-D latent: 60⁵ nodes
        wide = dataclasses.replace(valued, value_cells=60)
        value_controller(wide, lambda z, u: z, torch.zeros(5), torch.randn(10, 5))


def test_debug_run_with_multi_step_prediction(tmp_path):
    run, model = preset("debug", prediction_steps=3)
    summary = run_e2c(run, tmp_path, model)
    assert summary["run_config"]["prediction_steps"] == 3
    assert math.isfinite(summary["eval/predict"]) and summary["eval/consistency"] >= 0
    assert (tmp_path / "reconstructions.png").stat().st_size > 0
