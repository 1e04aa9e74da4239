"""The pixel pendulum of the E2C experiment: what its frames show, zoom, and its action repeat."""

import math

import numpy as np
import pytest

from latentvi.envs.pendulum import pendulum_step
from latentvi.envs.pendulum_pixels import PendulumPixels, wrap


def test_frames_show_the_angle():
    pendulum = PendulumPixels(32, 2)
    try:
        up, down = 1.0 - pendulum.frame(0.0)[0] / 255.0, 1.0 - pendulum.frame(math.pi)[0] / 255.0
    finally:
        pendulum.close()
    # the rod is the bright part: above the pivot when upright, below it when hanging down
    assert up[:14].sum() > 5 * up[18:].sum()
    assert down[18:].sum() > 5 * down[:14].sum()


def test_zoom_draws_the_rod_across_the_frame():
    plain, zoomed = PendulumPixels(32, 2), PendulumPixels(32, 2, zoom=2)
    try:
        small, large = (1.0 - p.frame(0.3)[0] / 255.0 for p in (plain, zoomed))
        hanging = 1.0 - zoomed.frame(math.pi)[0] / 255.0
    finally:
        plain.close()
        zoomed.close()
    assert small.shape == large.shape == (32, 32)
    # twice the length and twice the width: about four times the ink, still centred on the pivot
    assert 3.0 < large.sum() / small.sum() < 5.0
    assert large[:14].sum() > 5 * large[18:].sum()
    rows = np.nonzero(hanging.sum(1) > 0.5)[0]
    assert rows.max() >= 29 and rows.min() >= 13  # reaches the bottom edge, starts at the pivot


def test_step_repeats_the_action_every_time():
    # Regression: stepping the wrapped environment hit its 200-step time limit after 100 calls,
    # and the action repeat then silently stopped after one step.
    pendulum = PendulumPixels(16, 2)
    try:
        states = [pendulum.step(0.1, 0.0, 0.0) for _ in range(300)]
    finally:
        pendulum.close()
    expected = pendulum_step(0.1, 0.0, 0.0, repeat=2)[:2]
    assert set(states) == {tuple(float(v) for v in expected)}
    # two Euler steps of dt = 0.05 from rest at θ = 0.1: θ̇ = 2 · 15 sin(0.1) · 0.05 approximately
    assert states[-1][1] == pytest.approx(0.15, rel=0.02)


def test_wrap_maps_angles_into_minus_pi_pi():
    np.testing.assert_allclose(
        wrap(np.array([0.0, 2 * math.pi + 0.1, -math.pi - 0.1])),
        [0.0, 0.1, math.pi - 0.1],
        atol=1e-12,
    )
