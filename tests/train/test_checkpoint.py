"""Checkpoints: safetensors + JSON only, no pickle on load, atomic saves, actionable errors."""

from __future__ import annotations

import json
import pickle
import random

import numpy as np
import pytest
import torch
from torch import nn

from latentvi.train import CheckpointError, find_latest, load_checkpoint, save_checkpoint
from latentvi.train import checkpoint as checkpoint_module
from latentvi.train.checkpoint import find_best, list_checkpoints, mark_best


class Tied(nn.Module):
    """Tied input/output embeddings plus a non-contiguous buffer."""

    def __init__(self, size: int = 6) -> None:
        super().__init__()
        self.embed = nn.Embedding(size, 4)
        self.out = nn.Linear(4, size, bias=False)
        self.out.weight = self.embed.weight  # tied
        self.register_buffer("transposed", torch.arange(12.0).reshape(3, 4).T)  # strided view

    def forward(self, tokens):
        return self.out(self.embed(tokens))


def _trained(seed: int = 0, size: int = 6):
    torch.manual_seed(seed)
    model = Tied(size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.tensor([0, 1, 2])).logsumexp(-1).sum().backward()
        optimizer.step()
    return model, optimizer


def _save(run_dir, step=5, **kwargs):
    model, optimizer = _trained()
    extra = {"epoch": 2, "counts": {3: (1, 2.5)}, "table": torch.arange(3), "name": "x"}
    return save_checkpoint(run_dir, step, model, optimizer, extra, {"lr": 0.1}, **kwargs)


def test_round_trip_restores_model_optimizer_extra_state_and_rng(tmp_path):
    model, optimizer = _trained()
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    extra = {"epoch": 2, "counts": {3: (1, 2.5)}, "table": torch.arange(3), "name": "x"}
    path = save_checkpoint(tmp_path, 5, model, optimizer, extra, {"lr": 0.1})
    expected = (random.random(), np.random.rand(), torch.rand(()))

    restored, restored_optimizer = _trained(seed=9)
    state = load_checkpoint(tmp_path, restored, restored_optimizer)
    assert (random.random(), np.random.rand(), torch.rand(())) == expected
    assert state["step"] == 5 and state["path"] == str(path) and state["epoch"] == 2
    assert state["counts"] == {3: (1, 2.5)} and state["name"] == "x"
    assert torch.equal(state["table"], torch.arange(3))
    for name, value in model.state_dict().items():
        assert torch.equal(value, restored.state_dict()[name]), name
    assert restored.out.weight is restored.embed.weight  # still tied
    saved, loaded = optimizer.state_dict(), restored_optimizer.state_dict()
    assert saved["param_groups"] == loaded["param_groups"]
    for index, entries in saved["state"].items():
        for key, value in entries.items():
            assert torch.equal(value, loaded["state"][index][key]), (index, key)
    assert json.loads((path / "config.json").read_text()) == {"lr": 0.1}


def test_only_safetensors_and_json_files_and_no_pickle_on_load(tmp_path, monkeypatch):
    path = _save(tmp_path)
    suffixes = {file.suffix for file in path.iterdir()}
    assert suffixes == {".safetensors", ".json"}
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == path.name

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle/torch.load must not be used to load a checkpoint")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    model, optimizer = _trained(seed=4)
    assert load_checkpoint(path, model, optimizer)["step"] == 5


def test_truncated_model_file_names_the_file(tmp_path):
    path = _save(tmp_path)
    target = path / "model.safetensors"
    target.write_bytes(target.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is truncated or corrupt"):
        load_checkpoint(tmp_path, *_trained())


def test_flipped_bytes_are_detected_by_the_recorded_digest(tmp_path):
    path = _save(tmp_path)
    target = path / "optimizer.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"optimizer\.safetensors is corrupt: its sha256"):
        load_checkpoint(path, *_trained())


def test_truncated_safetensors_is_reported_even_without_a_digest(tmp_path):
    from latentvi.train.storage import read_tensors, write_tensors

    target = tmp_path / "t.safetensors"
    write_tensors(target, {"a": torch.ones(50)})
    target.write_bytes(target.read_bytes()[:40])
    with pytest.raises(CheckpointError, match=r"t\.safetensors is truncated or corrupt"):
        read_tensors(target)


@pytest.mark.parametrize("name", ["state.json", "optimizer.json"])
def test_corrupted_json_names_the_file(tmp_path, name):
    path = _save(tmp_path)
    (path / name).write_text('{"step": 5, "files": ')
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        load_checkpoint(path, *_trained())


def test_missing_file_and_missing_folder(tmp_path):
    path = _save(tmp_path)
    (path / "rng.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"rng\.safetensors is missing"):
        load_checkpoint(path, *_trained())
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere", *_trained())
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_checkpoint(tmp_path / "empty", *_trained())


def test_shape_mismatch_names_the_parameter_and_changes_nothing(tmp_path):
    _save(tmp_path)
    model, optimizer = _trained(seed=2, size=7)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"shape mismatch embed\.weight: checkpoint \(6, 4\)"):
        load_checkpoint(tmp_path, model, optimizer)
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    with pytest.raises(CheckpointError, match="missing keys"):
        load_checkpoint(tmp_path, nn.Sequential(nn.Linear(2, 2)))


def test_crash_during_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    first = _save(tmp_path, step=1)
    original = checkpoint_module.write_json

    def crash_on_config(path, value):
        if path.name == "config.json":  # after model, optimizer and rng files are written
            raise OSError("disk full (simulated)")
        original(path, value)

    monkeypatch.setattr(checkpoint_module, "write_json", crash_on_config)
    monkeypatch.setattr(checkpoint_module.shutil, "rmtree", lambda *a, **k: None)  # hard crash
    with pytest.raises(OSError, match="simulated"):
        _save(tmp_path, step=2)
    monkeypatch.undo()

    folder = tmp_path / "checkpoints"
    leftovers = [path.name for path in folder.iterdir() if path.name.startswith(".tmp-")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".tmp-step-000002-")
    assert (folder / "latest").read_text().strip() == "step-000001"
    assert find_latest(tmp_path) == first
    assert list_checkpoints(tmp_path) == [first]
    assert load_checkpoint(tmp_path, *_trained())["step"] == 1
    # The next save cleans the leftover up.
    _save(tmp_path, step=3, keep=5)
    assert not [path for path in folder.iterdir() if path.name.startswith(".tmp-")]


def test_crash_before_the_pointer_update_resumes_from_the_pointer(tmp_path, monkeypatch):
    first = _save(tmp_path, step=1)

    def crash(path, text):
        raise OSError("power cut (simulated)")

    monkeypatch.setattr(checkpoint_module, "replace_text", crash)
    with pytest.raises(OSError, match="simulated"):
        _save(tmp_path, step=2)
    monkeypatch.undo()
    assert find_latest(tmp_path) == first  # the pointer still names a complete checkpoint
    (tmp_path / "checkpoints" / "latest").unlink()
    assert find_latest(tmp_path).name == "step-000002"  # without it: the newest complete one


def test_pruning_keeps_the_newest_and_the_best(tmp_path):
    for step in (1, 2, 3):
        path = _save(tmp_path, step=step, keep=2)
        if step == 1:
            mark_best(path)
    for step in (4, 5):
        _save(tmp_path, step=step, keep=2)
    names = [path.name for path in list_checkpoints(tmp_path)]
    assert names == ["step-000001", "step-000004", "step-000005"]
    assert find_best(tmp_path).name == "step-000001"


def test_saving_the_same_step_again_replaces_it(tmp_path):
    _save(tmp_path, step=4)
    path = _save(tmp_path, step=4)
    assert list_checkpoints(tmp_path) == [path]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]


def test_unstorable_extra_state_is_refused(tmp_path):
    model, optimizer = _trained()
    with pytest.raises(TypeError, match="cannot be stored"):
        save_checkpoint(tmp_path, 1, model, optimizer, {"fn": print})
    with pytest.raises(ValueError, match=r"extra_state key 'step' is invalid"):
        save_checkpoint(tmp_path, 1, model, optimizer, {"step": 3})
