"""The E2C pixel-pendulum experiment: data layout, rendering, config errors, a debug run end to end."""

import json
import math

import numpy as np
import pytest
import torch

from latentvi.experiments.e2c import (
    E2CRunConfig,
    PendulumPixels,
    collect_transitions,
    evaluate_run,
    preset,
    run_e2c,
    wrap,
)


def test_frames_show_the_angle():
    pendulum = PendulumPixels(32, 2)
    try:
        up, down = 1.0 - pendulum.frame(0.0)[0] / 255.0, 1.0 - pendulum.frame(math.pi)[0] / 255.0
    finally:
        pendulum.close()
    # the rod is the bright part: above the pivot when upright, below it when hanging down
    assert up[:14].sum() > 5 * up[18:].sum()
    assert down[18:].sum() > 5 * down[:14].sum()


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


def test_wrap_maps_angles_into_minus_pi_pi():
    np.testing.assert_allclose(
        wrap(np.array([0.0, 2 * math.pi + 0.1, -math.pi - 0.1])),
        [0.0, 0.1, math.pi - 0.1],
        atol=1e-12,
    )


def test_bad_options_name_the_field():
    with pytest.raises(ValueError, match="success_steps"):
        E2CRunConfig(episode_steps=10, success_steps=20)
    with pytest.raises(ValueError, match="preset"):
        preset("huge")
    with pytest.raises(ValueError, match="unknown E2C options"):
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
