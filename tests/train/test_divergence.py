"""Divergence stops a run in one line; the kept checkpoint is finite and from before it, and a
resume from it with a smaller learning rate trains normally."""

from __future__ import annotations

import json
import math

import pytest
import safetensors.torch

from latentvi import cli
from latentvi.train.errors import TrainingDivergedError
from latentvi.train.step import EXPLOSION_FACTOR, WARMUP_STEPS, WEIGHT_LIMIT, ExplosionGuard

from .test_faults import TINY, run_cli, snapshot


def last_loss(out) -> float:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [row["loss/total"] for row in rows if "loss/total" in row][-1]


def kept_weights_are_finite(out) -> bool:
    latest = (out / "checkpoints" / "latest").read_text().strip()
    tensors = safetensors.torch.load_file(out / "checkpoints" / latest / "model.safetensors")
    return all(
        bool(t.isfinite().all()) and float(t.abs().max()) <= WEIGHT_LIMIT for t in tensors.values()
    )


def test_lr_1e30_keeps_the_checkpoint_from_before_and_a_resume_recovers(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main([*TINY, "--max-steps", "4", "--out", str(out)]) == 0
    before_loss = last_loss(out)
    kept = {k: v for k, v in snapshot(out).items() if k.startswith("checkpoints/step-")}
    capsys.readouterr()
    status, err = run_cli(
        [*TINY, "--max-steps", "10", "--checkpoint-every", "1", "--lr", "1e30", "--resume",
         "--out", str(out)],
        capsys,
    )  # fmt: skip
    assert status == 1 and len(err) == 1, err
    assert "training diverged at step 5" in err[0] and "step-000004" in err[0]
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-000004"
    after = snapshot(out)
    assert {k: after[k] for k in kept} == kept
    assert kept_weights_are_finite(out)
    # resume from the kept checkpoint with a sane learning rate: trains normally
    argv = [*TINY, "--max-steps", "40", "--lr", "1e-3", "--resume", "--out", str(out)]
    assert cli.main(argv) == 0
    assert math.isfinite(last_loss(out)) and last_loss(out) < before_loss
    assert kept_weights_are_finite(out)


def test_lr_1e6_explodes_in_one_line_without_a_bad_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [*TINY, "--max-steps", "200", "--checkpoint-every", "10", "--lr", "1e6"]
    status, err = run_cli([*argv, "--out", str(out)], capsys)
    assert status == 1 and len(err) == 1, err
    assert "training diverged" in err[0]
    if (out / "checkpoints" / "latest").exists():
        assert kept_weights_are_finite(out)


class NoRanks:
    distributed = False


def test_guard_trips_on_an_explosion_only():
    guard = ExplosionGuard()
    for step in range(WARMUP_STEPS):
        guard.check({"loss/total": 50.0 + step, "grad_norm": 5.0}, step, 1e-3, None, NoRanks())
    # a hundredfold rise (far more than normal training shows) passes
    guard.check({"loss/total": 6000.0, "grad_norm": 500.0}, 30, 1e-3, None, NoRanks())
    with pytest.raises(TrainingDivergedError, match=r"the loss is .* over 1e\+06 times"):
        guard.check({"loss/total": 60.0 * EXPLOSION_FACTOR, "grad_norm": 5.0}, 31, 1e-3, None,
                    NoRanks())  # fmt: skip
    with pytest.raises(TrainingDivergedError, match="gradient norm"):
        guard.check({"loss/total": 60.0, "grad_norm": 6 * EXPLOSION_FACTOR}, 32, 1e-3, None,
                    NoRanks())  # fmt: skip
