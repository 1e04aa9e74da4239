"""Divergence in the environment loop (latent-Q and the world models): a loss or gradient norm
that explodes while staying finite, or weights that blow up silently, stop the run in one line;
the kept checkpoint is the last one from before, finite and loadable, and the run resumes from
it."""

from __future__ import annotations

import math

import pytest
import torch

import latentvi
from latentvi import cli
from latentvi.cli_options import error_report
from latentvi.rl.latent_q import LatentQAgent
from latentvi.train.checkpoint import find_latest, load_checkpoint
from latentvi.train.errors import TrainingDivergedError
from latentvi.train.step import EXPLOSION_FACTOR, WARMUP_STEPS, WEIGHT_LIMIT, MetricGuard
from latentvi.train.storage import read_tensors

from .test_env_loop import SignAgent
from .test_env_loop import _train as train_toy_agent
from .test_faults import snapshot


class BlowUp(SignAgent):
    """SignAgent until update ``at``; from there its weight is ``weight`` (finite) and, when
    ``loud``, its reported loss is 10¹² (a loss that exploded without becoming non-finite)."""

    def __init__(self, at: int, weight: float, loud: bool) -> None:
        super().__init__()
        self.at, self.big, self.loud, self.calls = at, weight, loud, 0

    def update(self, batch) -> dict[str, float]:
        self.calls += 1
        if self.calls < self.at:
            return super().update(batch)
        with torch.no_grad():
            self.weight.fill_(self.big)
        return {"loss/total": 1e12 if self.loud else 1.0}


def _train(out, make_agent, steps=200, resume=False):
    return train_toy_agent(out, steps=steps, resume=resume, make_agent=make_agent)


def _kept_is_finite_and_loads(out) -> str:
    latest = find_latest(out)
    tensors = read_tensors(latest / "model.safetensors")
    assert all(bool(t.isfinite().all()) and float(t.abs().max()) <= WEIGHT_LIMIT
               for t in tensors.values())  # fmt: skip
    load_checkpoint(latest, SignAgent())  # loads into a fresh agent
    return latest.name


# Updates start at environment step 20, one every 2 steps: update 45 is at step 108, after
# the checkpoints of steps 40 and 80 (episode boundaries) and before that of step 120.
@pytest.mark.parametrize("loud", [True, False], ids=["loss-explodes", "weights-blow-up-silently"])
def test_a_blow_up_stops_the_env_loop_in_one_line_and_keeps_the_checkpoint_before(tmp_path, loud):
    out = tmp_path / "run"
    with pytest.raises(TrainingDivergedError) as raised:
        _train(out, lambda: BlowUp(at=45, weight=1e9, loud=loud))
    message, code = error_report(raised.value)
    assert code == 1 and "\n" not in message
    if loud:  # the guard sees it at once
        assert "training diverged after 45 updates (108 environment steps): loss/total is " in (
            message
        )
        assert f"1e+12, over {EXPLOSION_FACTOR:g} times its scale" in message
    else:  # weights of 1e9 are refused when the next checkpoint (step 120) is due
        assert "training diverged after 51 updates (120 environment steps): weight weight " in (
            message
        )
        assert "reaches 1e+09 (limit 1e+06), so no checkpoint was written" in message
    assert "step-000080" in message and "resume it (--resume)" in message
    assert raised.value.last_checkpoint.endswith("step-000080")
    assert _kept_is_finite_and_loads(out) == "step-000080"
    kept = snapshot(out / "checkpoints" / "step-000080")
    # resuming from it (here with a sane agent) trains to the end
    state = _train(out, SignAgent, resume=True)
    assert state["env_steps"] == 200 and math.isfinite(state["curve"][-1]["return_mean"])
    assert snapshot(out / "checkpoints" / "step-000080") == kept
    assert _kept_is_finite_and_loads(out) == "step-000200"


def test_the_metric_guard_trips_on_an_explosion_only():
    guard = MetricGuard()
    for step in range(WARMUP_STEPS):
        assert guard.exploded({"loss/td": 0.5 + step / 100, "train/model_grad_norm": 20.0,
                               "train/q": -3.0}) is None  # fmt: skip
    # scales: the median, at least 1; a hundredfold rise (far more than normal) passes
    assert guard.scales == {"loss/td": 1.0, "train/model_grad_norm": 20.0}
    assert guard.exploded({"loss/td": -100.0, "train/model_grad_norm": 2000.0}) is None
    assert guard.exploded({"train/q": 1e30, "loss/other": 1e30}) is None  # not watched / warming
    assert guard.exploded({"loss/td": 2e6}) == ("loss/td", 2e6, 1.0)
    assert guard.exploded({"loss/td": 1.0, "train/model_grad_norm": -3e7}) == (
        "train/model_grad_norm", -3e7, 20.0,
    )  # fmt: skip


def test_rl_latent_q_whose_loss_explodes_exits_1_in_one_line(tmp_path, capsys, monkeypatch):
    update, calls = LatentQAgent.update, []

    def exploding(self, batch):
        metrics = update(self, batch)
        calls.append(1)
        if len(calls) >= 60:
            metrics["loss/td"] = torch.tensor(1e15)
        return metrics

    monkeypatch.setattr(LatentQAgent, "update", exploding)
    out = tmp_path / "run"
    argv = ["rl", "latent-q", "--env", "latentvi/PixelChain-v0", "--variant", "vae",
            "--preset", "debug", "--checkpoint-every", "50", "--no-progress",
            "--no-tensorboard", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert "training diverged after 60 updates" in err[0] and "loss/td is 1e+15" in err[0]
    latest = find_latest(out)
    assert latest is not None and latest.name in err[0]
    assert int(latest.name.split("-")[1]) < 100 + 60  # before the explosion
    agent = latentvi.load(out)
    assert all(bool(p.isfinite().all()) for p in agent.parameters())
    assert not (out / "curve.png").exists()
