"""Sizes that cannot fit are refused in one line before anything is allocated or written."""

from __future__ import annotations

import pytest

from latentvi import cli
from latentvi.data.replay import ReplayBuffer
from latentvi.memory import available_memory, format_bytes, mlp_parameters, require_memory


def run_cli(argv, capsys):
    code = cli.main(argv)
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_available_memory_is_read_from_the_machine():
    available = available_memory()
    assert available is not None and 10**7 < available < 10**15


def test_estimates_and_refusal():
    assert mlp_parameters([3, 4, 2]) == (3 + 1) * 4 + (4 + 1) * 2
    assert format_bytes(1.5e12) == "1.5 TB"
    require_memory(1000, "a tiny thing", ("size",), "use less")  # fits: nothing happens
    with pytest.raises(ValueError, match=r"^size too large: a huge thing needs at least"):
        require_memory(10**20, "a huge thing", ("size",), "use less")


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "vae", "--dataset", "digits", "--latent-dim", "100000000000"],
        ["train", "vae", "--dataset", "digits", "--hidden", "100000000,100000000"],
        ["vi", "--num-points", "1000000000000"],
        ["rl", "latent-q", "--env", "latentvi/PixelChain-v0", "--variant", "vae", "--preset",
         "debug", "--buffer-size", "100000000000", "--steps", "10"],
    ],
)  # fmt: skip
def test_sizes_that_cannot_fit_are_one_line_and_write_nothing(argv, tmp_path, capsys):
    out = tmp_path / "run"
    status, err = run_cli([*argv, "--out", str(out)], capsys)
    assert status == 2 and len(err) == 1, err
    assert "too large" in err[0] and "of memory" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_a_replay_buffer_that_cannot_fit_is_refused_before_allocating():
    with pytest.raises(ValueError, match="replay buffer of 10000000000000 frames"):
        ReplayBuffer(10**13, (3, 64, 64))
