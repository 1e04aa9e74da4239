"""Run folders are trusted less: hostile JSON and forged-hash tensors are refused in one line,
and the folder is byte-identical afterwards. Hashes catch accidents only; what is read back is
validated (types, ranges, sizes, nesting; tensors' names, shapes, dtypes and finiteness)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch

from latentvi import cli
from latentvi.train.storage import file_digest

from .test_faults import TINY, run_cli, snapshot

DEEP = 200_000


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hostile") / "run"
    assert cli.main([*TINY, "--max-steps", "2", "--out", str(out)]) == 0
    return out


@pytest.fixture
def run(trained_once, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained_once, copy)
    return copy


def edit_json(path: Path, change) -> None:
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


def refused(run: Path, capsys, *commands: list[str]) -> list[str]:
    """Each command is refused with exit 2 and one line; the folder is unchanged."""
    before = snapshot(run)
    lines = []
    for command in commands:
        capsys.readouterr()
        status, err = run_cli(command, capsys)
        assert status == 2 and len(err) == 1, err
        lines.append(err[0])
        assert snapshot(run) == before
    return lines


def eval_and_sample(run: Path, tmp_path: Path) -> list[list[str]]:
    return [
        ["eval", str(run), "--importance-samples", "2", "--n-examples", "10", "--json"],
        ["sample", str(run), "--n", "4", "--out", str(tmp_path / "s.png")],
    ]


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("latent_dim", "fifty", "wrong type"),
        ("latent_dim", 10**12, "too large"),
        ("hidden", [16, "x"], "wrong type"),
        ("no_such_option", 1, "no field 'no_such_option'"),
        ("latent_dim", -3, "latent_dim"),
    ],
)
def test_hostile_model_configs_are_one_line(run, tmp_path, capsys, field, value, words):
    edit_json(run / "run.json", lambda r: r["configs"]["model"].__setitem__(field, value))
    for line in refused(run, capsys, *eval_and_sample(run, tmp_path)):
        assert words in line, line
    assert not (tmp_path / "s.png").exists()


def test_a_huge_data_shape_is_one_line(run, tmp_path, capsys):
    edit_json(run / "run.json", lambda r: r["info"].__setitem__("data_shape", [1, 10**9, 10**9]))
    for line in refused(run, capsys, *eval_and_sample(run, tmp_path)):
        assert "data_shape" in line


@pytest.mark.parametrize("name", ["run.json", "checkpoints/step-000002/state.json"])
def test_json_nested_200000_levels_is_one_line(run, tmp_path, capsys, name):
    (run / name).write_text("[" * DEEP + "]" * DEEP)
    resume = [*TINY, "--max-steps", "4", "--out", str(run), "--resume"]
    for line in refused(run, capsys, *eval_and_sample(run, tmp_path), resume):
        assert "nests too deeply" in line and name.split("/")[-1] in line


def forge(run: Path, change) -> None:
    """Change the model's tensors, then forge state.json's size and sha256 to match."""
    folder = run / "checkpoints" / "step-000002"
    path = folder / "model.safetensors"
    tensors = safetensors.torch.load_file(path)
    change(tensors)
    path.write_bytes(safetensors.torch.save(tensors))
    edit_json(folder / "state.json", lambda s: s["files"].__setitem__(path.name, file_digest(path)))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda t: t.__setitem__(next(iter(t)), t[next(iter(t))].to(torch.int64)), "dtype"),
        (lambda t: t[next(iter(t))].view(-1).__setitem__(0, float("nan")), "non-finite"),
        (lambda t: t[next(iter(t))].view(-1).__setitem__(0, float("inf")), "non-finite"),
        (lambda t: t.__setitem__("extra.weight", torch.zeros(2)), "unexpected keys"),
        (lambda t: t.__setitem__(next(iter(t)), torch.zeros(3, 3)), "shape mismatch"),
    ],
)
def test_forged_hash_tensors_are_refused(run, tmp_path, capsys, change, words):
    forge(run, change)
    resume = [*TINY, "--max-steps", "4", "--out", str(run), "--resume"]
    for line in refused(run, capsys, *eval_and_sample(run, tmp_path), resume):
        assert words in line and "model.safetensors" in line, line
    assert not (tmp_path / "s.png").exists()
