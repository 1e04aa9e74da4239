"""The training loop: convergence, divergence guard, logging, validation, callbacks, devices."""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import math

import pytest
import torch
from torch import nn

from latentvi.train import (
    TrainConfig,
    TrainingDivergedError,
    evaluate,
    find_latest,
    fit,
    load_checkpoint,
    read_metrics,
)
from latentvi.train.batches import batch_size, move_to
from latentvi.train.checkpoint import list_checkpoints
from latentvi.train.precision import bfloat16_matmuls_in_effect


def _config(**changes) -> TrainConfig:
    base = TrainConfig(max_steps=10, log_every=2, progress=False, tensorboard=False)
    return dataclasses.replace(base, **changes)


class LinearRegression(nn.Module):
    """Mean squared error of a linear map, float64; its optimum is the least-squares solution."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 1).double()

    def loss(self, batch):
        x, y = batch
        mse = (self.linear(x) - y).pow(2).mean()
        return mse, {"loss/mse": mse}


def test_full_batch_training_reaches_the_least_squares_solution():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=generator, dtype=torch.float64)
    y = x @ torch.tensor([[0.5], [-1.0], [2.0], [0.1]], dtype=torch.float64) + 0.7
    y = y + 0.3 * torch.randn(64, 1, generator=generator, dtype=torch.float64)
    design = torch.cat([x, torch.ones(64, 1, dtype=torch.float64)], dim=1)
    solution = torch.linalg.lstsq(design, y).solution  # (5, 1): weights then bias
    optimum = (design @ solution - y).pow(2).mean().item()

    model = LinearRegression()
    result = fit(
        model,
        lambda epoch, generator: [(x, y)],
        1,
        _config(max_steps=None, epochs=300, log_every=50),
        optimizer_factory=lambda m: torch.optim.SGD(m.parameters(), lr=0.3),
    )
    fitted = torch.cat([model.linear.weight.detach().T, model.linear.bias.detach()[:, None]])
    # Full-batch gradient descent contracts linearly (rate ≤ 1 - 0.3·2λ_min ≈ 0.6 here), so after
    # 300 steps the gap is round-off; 1e-8 leaves ample margin.
    torch.testing.assert_close(fitted, solution, atol=1e-8, rtol=0)
    assert result.metrics["loss/total"] == pytest.approx(optimum, abs=1e-10)
    assert result.steps == 300 and result.epochs == 300.0


class ExplodesAt(nn.Module):
    """Fits a constant; the loss is NaN on the k-th training call (or its gradient, with sqrt)."""

    def __init__(self, bad_call: int, where: str = "loss") -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([1.0, -1.0]))
        self.bad_call, self.where, self.calls = bad_call, where, 0

    def loss(self, batch):
        if self.training:
            self.calls += 1
        value = (self.weight - batch.mean()).pow(2).sum() + 0.01 * torch.randn(())
        if self.training and self.calls == self.bad_call:
            if self.where == "loss":
                value = value * float("nan")
            else:  # finite loss, infinite gradient: d sqrt(u)/du at u = 0
                value = value + torch.sqrt((self.weight[0] - self.weight[0].detach()).abs())
        return value, {"loss/fit": value, "elbo": -value}


def _constant_batches(epoch, generator):
    return [torch.randn(4, generator=generator) + 3.0 for _ in range(5)]


@pytest.mark.parametrize(("where", "culprit"), [("loss", "loss"), ("gradient", "weight")])
def test_divergence_stops_before_the_update_and_keeps_the_last_good_checkpoint(
    tmp_path, where, culprit
):
    bad_step = 6
    config = _config(max_steps=10, checkpoint_every=2, keep_checkpoints=5, out=str(tmp_path / "x"))
    model = ExplodesAt(bad_step, where)
    with pytest.raises(TrainingDivergedError) as caught:
        fit(model, _constant_batches, 5, config)
    error = caught.value
    message = str(error)
    assert f"step {bad_step}" in message and culprit in message
    assert "resume=True" in message and "lr=" in message
    assert error.step == bad_step
    last_good = tmp_path / "x" / "checkpoints" / "step-000004"
    assert error.last_checkpoint == str(last_good) and str(last_good) in message
    assert [path.name for path in list_checkpoints(tmp_path / "x")] == [
        "step-000002",
        "step-000004",
    ]
    assert find_latest(tmp_path / "x") == last_good
    # The parameters are those after step 5: equal to a run that stopped there.
    reference = ExplodesAt(bad_call=-1)
    fit(reference, _constant_batches, 5, dataclasses.replace(config, max_steps=5, out=None))
    assert torch.equal(model.weight, reference.weight)
    # No metrics row was written for the refused step.
    assert max(row["step"] for row in read_metrics(tmp_path / "x")) < bad_step


def test_divergence_without_checkpoints_says_so():
    with pytest.raises(TrainingDivergedError, match="no checkpoint has been written"):
        fit(ExplodesAt(2), _constant_batches, 5, _config())


def _valid():
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(7, 3, generator=generator)
    y = x.sum(-1, keepdim=True)
    return [(x[:4], y[:4]), (x[4:], y[4:])]


def test_metrics_files_hold_the_namespaced_keys(tiny, tmp_path):
    data = tiny.data()
    result = fit(
        tiny.model(),
        data,
        data,
        _config(max_steps=12, log_every=4, eval_every=6, out=str(tmp_path)),
        make_valid_batches=_valid,
        extra_config={"model": {"hidden": 8}},
    )
    rows = read_metrics(tmp_path)
    train_rows = [row for row in rows if "loss/total" in row]
    eval_rows = [row for row in rows if "eval/loss/total" in row]
    assert [row["step"] for row in train_rows] == [4, 8, 12]
    assert [row["step"] for row in eval_rows] == [6, 12]
    expected_train = {
        "step", "time", "loss/total", "train/loss/mse", "train/elbo", "train/grad_norm",
        "train/epoch", "train/lr", "perf/steps_per_sec", "perf/examples_per_sec",
    }  # fmt: skip
    assert set(train_rows[0]) == expected_train
    assert set(eval_rows[0]) == {"step", "time", "eval/loss/total", "eval/loss/mse", "eval/elbo"}
    assert train_rows[0]["train/elbo"] == pytest.approx(-train_rows[0]["loss/total"])
    assert train_rows[0]["perf/examples_per_sec"] == pytest.approx(
        5 * train_rows[0]["perf/steps_per_sec"]
    )
    # CSV: one row per log call, columns = union of keys.
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(lines) == 1 + len(rows)
    assert set(lines[0].split(",")) == expected_train | set(eval_rows[0])
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["train"]["max_steps"] == 12 and saved["model"] == {"hidden": 8}
    assert saved["resolved"]["device"] == "cpu"
    assert result.metrics["eval/loss/total"] == eval_rows[-1]["eval/loss/total"]
    assert result.best_checkpoint == result.last_checkpoint == find_latest(tmp_path)


class MeanOf(nn.Module):
    def loss(self, batch):
        value = batch["x"].mean()
        return value, {"mean": value}


def test_evaluate_weights_batches_by_size_and_restores_train_mode():
    model = MeanOf().train()
    batches = [{"x": torch.full((3,), 1.0)}, {"x": torch.full((1,), 5.0)}]
    metrics = evaluate(model, lambda: batches)
    assert metrics == {"eval/loss/total": 2.0, "eval/mean": 2.0}  # (3·1 + 1·5) / 4
    assert model.training
    with pytest.raises(ValueError, match="no batches"):
        evaluate(model, lambda: [])


def test_callbacks_see_metrics_can_log_and_do_not_disturb_training(tiny, tmp_path):
    data = tiny.data()
    calls = []

    def callback(step, model, metrics):
        calls.append((step, sorted(metrics)))
        torch.randn(100)  # draws in its own random stream
        return {"eval/custom": float(step)}

    with_callback, without = tiny.model(), tiny.model()
    fit(with_callback, data, data, _config(out=str(tmp_path)), callbacks=[callback])
    fit(without, data, data, _config())
    assert [step for step, _ in calls] == [2, 4, 6, 8, 10]
    assert "loss/total" in calls[0][1]
    pairs = zip(with_callback.parameters(), without.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    custom = [row["step"] for row in read_metrics(tmp_path) if "eval/custom" in row]
    assert custom == [2, 4, 6, 8, 10]


def test_epochs_mode_end_of_epoch_validation_and_grad_clip(tiny, tmp_path):
    data = tiny.data()
    result = fit(
        tiny.model(),
        data,
        data,
        _config(max_steps=None, epochs=2, grad_clip=0.5, log_every=100, out=str(tmp_path)),
        make_valid_batches=_valid,
    )
    assert result.steps == 16 and result.epochs == 2.0
    assert [row["step"] for row in read_metrics(tmp_path) if "eval/elbo" in row] == [8, 16]
    model = tiny.model(seed=4)
    assert load_checkpoint(result.last_checkpoint, model)["epoch"] == 2


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_shows_step_and_elbo_on_a_terminal(tiny, monkeypatch):
    data = tiny.data()
    for stream, drawn in ((_Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr("sys.stderr", stream)
        fit(tiny.model(), data, data, _config(progress=True, max_steps=4))
        err = stream.getvalue()
        assert ("elbo=" in err and "loss=" in err and "4/4" in err) is drawn


def test_bad_model_outputs_and_data_are_reported(tiny):
    class VectorLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(3))

        def loss(self, batch):
            return self.w * batch[0].mean(), {}

    data = tiny.data()
    with pytest.raises(ValueError, match="scalar loss"):
        fit(VectorLoss(), data, data, _config())
    with pytest.raises(ValueError, match="num_batches"):
        fit(tiny.model(), data, 0, _config())
    with pytest.raises(ValueError, match="stopped after batch 8"):
        fit(tiny.model(), data, 9, _config())
    with pytest.raises(TypeError, match="loss"):
        fit(nn.Linear(2, 2), data, data, _config())


Pair = collections.namedtuple("Pair", ["x", "y"])


def test_move_to_and_batch_size_handle_nested_batches():
    batch = {"obs": [Pair(torch.ones(4, 2), torch.zeros(4))], "scale": 2.0}
    moved = move_to(batch, torch.device("meta"))
    assert isinstance(moved["obs"][0], Pair)
    assert moved["obs"][0].x.device.type == "meta" and moved["scale"] == 2.0
    assert batch_size(batch) == 4
    assert batch_size((torch.tensor(1.0),)) is None


@pytest.mark.parametrize("listed", [False, True])
def test_gradient_norm_clips_and_names_the_bad_parameter(listed):
    """Given the module, or its named parameters listed once (as `fit` passes them)."""
    from latentvi.optim_step import gradient_norm

    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    target = list(model.named_parameters()) if listed else model
    for index, parameter in enumerate(model.parameters()):
        parameter.grad = torch.full_like(parameter, 3.0 if index == 0 else 0.0)
    norm, bad = gradient_norm(target, clip=1.0)
    assert bad is None and norm == pytest.approx(6.0)  # four entries of 3
    clipped = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert clipped.item() == pytest.approx(1.0, abs=1e-5)
    model[1].bias.grad[0] = float("inf")
    norm, bad = gradient_norm(target, clip=1.0)
    assert bad == "gradient of 1.bias" and not math.isfinite(norm)
    assert torch.isfinite(model[0].weight.grad).all()  # left untouched


class _SubnormalProbe(nn.Module):
    """Records whether a subnormal float32 survives a multiplication during each step."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))
        self.survived: list[bool] = []

    def loss(self, batch):
        tiny = torch.full((1,), 1e-39) * 1.0  # below float32's smallest normal, 1.18e-38
        self.survived.append(bool(tiny.item() != 0))
        loss = (self.weight * batch[0]).pow(2).mean()
        return loss, {}


@pytest.mark.parametrize("flush", [True, False])
def test_subnormals_are_flushed_only_while_training_and_only_when_asked(flush):
    model = _SubnormalProbe()
    data = lambda epoch, generator: [(torch.ones(2),)] * 3  # noqa: E731
    fit(model, data, 3, _config(max_steps=3, flush_denormal=flush))
    assert model.survived == [not flush] * 3
    assert (torch.full((1,), 1e-39) * 1.0).item() != 0  # back to PyTorch's default afterwards


class _PrecisionProbe(nn.Module):
    """Records the float32 matmul precision that each training step runs under."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))
        self.seen: list[str] = []

    def loss(self, batch):
        self.seen.append(torch.get_float32_matmul_precision())
        return (self.weight * batch[0]).pow(2).mean(), {}


@pytest.mark.parametrize(("precision", "inside"), [("float32", "highest"), ("bfloat16", "medium")])
def test_matmul_precision_holds_while_training_and_is_restored(precision, inside, caplog):
    model = _PrecisionProbe()
    data = lambda epoch, generator: [(torch.ones(2),)] * 3  # noqa: E731
    before = torch.get_float32_matmul_precision()
    with caplog.at_level("WARNING", logger="latentvi.train.loop"):
        fit(model, data, 3, _config(max_steps=3, matmul_precision=precision))
    assert model.seen == [inside] * 3
    assert torch.get_float32_matmul_precision() == before
    # bfloat16 on a CPU whose float32 matmuls ignore it is said, not silent (either machine)
    ignored = precision == "bfloat16" and not bfloat16_matmuls_in_effect()
    assert ("has no effect on this CPU" in caplog.text) == ignored


def test_the_default_optimizer_is_fused_adamw_where_the_parameters_allow():
    from latentvi.train.optim import default_optimizer

    config = TrainConfig(lr=0.01, weight_decay=0.1)
    optimizer = default_optimizer(nn.Linear(3, 2), config)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"]
    assert optimizer.defaults["lr"] == 0.01 and optimizer.defaults["weight_decay"] == 0.1
    with torch.no_grad():
        integer = nn.Module()
        integer.count = nn.Parameter(torch.zeros(2, dtype=torch.int64), requires_grad=False)
    assert not default_optimizer(integer, config).defaults["fused"]
