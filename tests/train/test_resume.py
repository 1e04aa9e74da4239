"""Stopping and resuming is invisible: N steps at once == N/2 steps + resume, bitwise, on CPU."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from latentvi.train import TrainConfig, find_latest, fit, load_checkpoint, read_metrics

PER_EPOCH = 8  # 40 examples, batches of 5
TOTAL = 20  # 2.5 epochs


def _config(out, **changes) -> TrainConfig:
    base = TrainConfig(
        max_steps=TOTAL,
        lr=0.05,
        seed=3,
        log_every=4,
        checkpoint_every=3,
        keep_checkpoints=2,
        progress=False,
        tensorboard=False,
        out=None if out is None else str(out),
    )
    return dataclasses.replace(base, **changes)


def _no_start(data):
    """The same factory without the `start` fast path: the loop must draw and drop batches."""

    def make_batches(epoch, generator):
        return data(epoch, generator)

    return make_batches


def _run(tiny, out, stops, factory_kind):
    data = tiny.data()
    make_batches = data if factory_kind == "start" else _no_start(data)
    model = tiny.model(seed=0)
    valid = tiny.data(count=10, batch_size=4, seed=9)
    recorder = None
    result = None
    for index, stop in enumerate(stops):
        config = _config(out, max_steps=stop)
        recorder = tiny.recording_optimizer(config)
        result = fit(
            model,
            make_batches,
            PER_EPOCH,
            config,
            make_valid_batches=lambda: valid(0, torch.Generator().manual_seed(0)),
            optimizer_factory=recorder,
            resume=index > 0,
        )
        if index + 1 < len(stops):  # a new process would start from a fresh model object
            model = tiny.model(seed=123)
    return model, recorder.built[-1], result


def _curve(rows):
    return [
        {k: v for k, v in row.items() if k != "time" and not k.startswith("perf/")}
        for row in rows
        if row["step"] % 4 == 0
    ]


@pytest.mark.parametrize(
    ("stop", "factory_kind"),
    [(8, "start"), (11, "start"), (11, "drop"), (16, "drop")],
    ids=["epoch-boundary", "mid-epoch", "mid-epoch-no-start", "epoch-boundary-no-start"],
)
def test_resumed_run_is_bitwise_identical(tiny, tmp_path, assert_same_state, stop, factory_kind):
    straight_model, straight_opt, straight = _run(tiny, tmp_path / "a", [TOTAL], factory_kind)
    split_model, split_opt, split = _run(tiny, tmp_path / "b", [stop, TOTAL], factory_kind)

    assert straight.steps == split.steps == TOTAL
    assert_same_state(straight_model, straight_opt, split_model, split_opt)
    # The training curves agree too (rows at regular log steps; timings aside), no duplicates.
    rows_a, rows_b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert _curve(rows_a) == _curve(rows_b)
    steps_b = [row["step"] for row in rows_b if "loss/total" in row]
    assert steps_b == sorted(set(steps_b))
    final = [
        {k: v for k, v in r.metrics.items() if not k.startswith("perf/")} for r in (straight, split)
    ]
    assert final[0] == final[1]


def test_resume_three_times_and_checkpoint_equality(tiny, tmp_path, assert_same_state):
    _, _, straight = _run(tiny, tmp_path / "a", [TOTAL], "start")
    _, _, split = _run(tiny, tmp_path / "b", [5, 13, TOTAL], "start")
    # The final checkpoints on disk hold the same model and optimizer state.
    models, optimizers = [], []
    for result in (straight, split):
        model = tiny.model(seed=7)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
        state = load_checkpoint(result.last_checkpoint, model, optimizer, restore_rng=False)
        assert state["step"] == TOTAL
        models.append(model)
        optimizers.append(optimizer)
    assert_same_state(models[0], optimizers[0], models[1], optimizers[1])
    assert find_latest(tmp_path / "b").name == "step-000020"


def test_resume_needs_a_checkpoint(tiny, tmp_path):
    data = tiny.data()
    with pytest.raises(ValueError, match="holds no checkpoint"):
        fit(tiny.model(), data, data, _config(tmp_path / "empty"), resume=True)
    with pytest.raises(ValueError, match="out is None"):
        fit(tiny.model(), data, data, _config(None), resume=True)


def test_fresh_run_refuses_a_folder_with_checkpoints(tiny, tmp_path):
    data = tiny.data()
    fit(tiny.model(), data, data, _config(tmp_path, max_steps=3))
    with pytest.raises(ValueError, match="resume=True"):
        fit(tiny.model(), data, data, _config(tmp_path, max_steps=3))


def test_resume_adopts_a_changed_learning_rate(tiny, tmp_path):
    data = tiny.data()
    fit(tiny.model(), data, data, _config(tmp_path, max_steps=3))
    recorder = tiny.recording_optimizer(_config(tmp_path, lr=0.001))
    fit(tiny.model(), data, data, _config(tmp_path, max_steps=5, lr=0.001), resume=True,
        optimizer_factory=recorder)  # fmt: skip
    assert recorder.built[-1].param_groups[0]["lr"] == 0.001
