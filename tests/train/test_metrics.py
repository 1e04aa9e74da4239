"""MetricsLogger: jsonl is the record, csv widens with new keys, resume drops replayed steps."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from latentvi.train import MetricsLogger, read_metrics


def _csv_rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_jsonl_and_csv_hold_every_row_with_the_union_of_columns(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log(1, {"loss/total": torch.tensor(2.5), "train/elbo": -2.5})
        logger.log(2, {"loss/total": 2.0, "train/elbo": -2.0})
        logger.log(2, {"eval/elbo": torch.tensor([-1.5])})  # a new key: the CSV is rewritten
        logger.log(3, {"loss/total": float("nan")})
    rows = read_metrics(tmp_path)
    assert [row["step"] for row in rows] == [1, 2, 2, 3]
    assert rows[0]["loss/total"] == 2.5 and rows[2] == {**rows[2], "eval/elbo": -1.5}
    assert math.isnan(rows[3]["loss/total"])
    table = _csv_rows(tmp_path)
    assert list(table[0]) == ["step", "time", "loss/total", "train/elbo", "eval/elbo"]
    assert [row["step"] for row in table] == ["1", "2", "2", "3"]
    assert table[0]["eval/elbo"] == "" and float(table[2]["eval/elbo"]) == -1.5


def test_resume_step_drops_rows_after_the_checkpoint(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        for step in range(1, 7):
            logger.log(step, {"loss/total": float(step)})
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 7, "loss/to')  # a torn line from a crash
    with MetricsLogger(tmp_path, tensorboard=False, resume_step=4) as logger:
        logger.log(5, {"loss/total": 50.0})
    assert [(row["step"], row["loss/total"]) for row in read_metrics(tmp_path)] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 50.0),
    ]  # fmt: skip
    assert [row["step"] for row in _csv_rows(tmp_path)] == ["1", "2", "3", "4", "5"]
    # A fresh logger (no resume_step) starts over.
    MetricsLogger(tmp_path, tensorboard=False).close()
    assert read_metrics(tmp_path) == []


def test_bad_metrics_are_refused(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        with pytest.raises(ValueError, match="shape"):
            logger.log(1, {"loss/total": torch.ones(3)})
        with pytest.raises(ValueError, match="reserved"):
            logger.log(1, {"step": 1})
        with pytest.raises(ValueError, match="not a number"):
            logger.log(1, {"train/name": "text"})


def test_tensorboard_scalars_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    with MetricsLogger(tmp_path) as logger:
        assert logger.tensorboard_enabled
        logger.log(1, {"loss/total": 1.0})
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
