"""Data-parallel training: 2 gloo ranks with half the batch each == 1 process with all of it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from latentvi.train import read_metrics
from latentvi.train.batches import epoch_batches
from latentvi.train.distributed import DistInfo, init_distributed, shard_kwargs

WORKER = Path(__file__).with_name("ddp_worker.py")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_ranks_match_one_process(tmp_path):
    environment = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    completed = subprocess.run(
        [sys.executable, str(WORKER), str(tmp_path), str(_free_port())],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    single = load_file(tmp_path / "single.safetensors")
    ddp = load_file(tmp_path / "ddp.safetensors")
    for name, value in single.items():
        # Same update up to float32 round-off of averaging gradients across ranks.
        torch.testing.assert_close(ddp[name], value, atol=1e-6, rtol=0)
    assert not torch.equal(single["linear.bias"], torch.tensor([0.05]))  # it did train
    # Rank 0 logged means over both ranks (= full-batch values) for every step, once.
    rows = [row for row in read_metrics(tmp_path / "ddp") if "loss/total" in row]
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5]
    assert rows[0]["perf/examples_per_sec"] == pytest.approx(16 * rows[0]["perf/steps_per_sec"])
    state = json.loads(
        (tmp_path / "ddp" / "checkpoints" / "step-000005" / "state.json").read_text()
    )
    assert len(state["rng"]) == 2  # one random state per rank
    config = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert config["resolved"]["world_size"] == 2


def test_single_process_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed() == DistInfo(0, 1, 0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("MASTER_PORT", "1234")
    with pytest.raises(ValueError, match="MASTER_ADDR not set; launch with torchrun"):
        init_distributed()


def test_factories_get_their_shard_or_are_refused():
    info = DistInfo(rank=1, world_size=2)
    seen = []

    def sharded(epoch, generator, *, rank=0, world_size=1):
        seen.append((rank, world_size))
        return [0, 1, 2]

    assert list(epoch_batches(sharded, 0, 0, 1, info)) == [1, 2]
    assert seen == [(1, 2)]
    assert shard_kwargs(sharded, DistInfo()) == {}
    with pytest.raises(ValueError, match="rank= and world_size="):
        epoch_batches(lambda epoch, generator: [0], 0, 0, 0, info)
