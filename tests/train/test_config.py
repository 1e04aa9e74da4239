"""TrainConfig validation names the field and the fix; the config works behind argparse."""

from __future__ import annotations

import argparse
import itertools

import pytest
import torch

from latentvi.config import add_arguments, from_arguments
from latentvi.train import TrainConfig


@pytest.mark.parametrize(
    ("field", "value", "fix"),
    [
        ("epochs", 0, "1 or more"),
        ("max_steps", 0, "or None"),
        ("lr", 0.0, "positive finite"),
        ("lr", float("nan"), "positive finite"),
        ("weight_decay", -0.1, "0.0"),
        ("betas", (0.9,), "two decay rates"),
        ("betas", (0.9, 1.0), "[0, 1)"),
        ("eps", 0.0, "small positive"),
        ("grad_clip", 0.0, "or None"),
        ("seed", -1, "[0, "),
        ("seed", 2**40, "[0, "),
        ("device", "tpu", "one of"),
        ("log_every", 0, "1 or more"),
        ("eval_every", -1, "0"),
        ("checkpoint_every", -5, "0"),
        ("keep_checkpoints", 0, "at least 1"),
        ("progress", "yes", "True or False"),
        ("out", "", "folder path"),
        ("epochs", 1.5, "1 or more"),
        ("matmul_precision", "float16", "float32, bfloat16"),
    ],
)
def test_invalid_values_name_the_field_and_the_fix(field, value, fix):
    with pytest.raises(ValueError, match=rf"^{field} = ") as caught:
        TrainConfig(**{field: value})
    assert fix in str(caught.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_says_so():
    with pytest.raises(ValueError, match="CUDA is not available"):
        TrainConfig(device="cuda")


def test_defaults_and_device_resolution():
    config = TrainConfig()
    assert config.lr == 1e-3 and config.max_steps is None and config.grad_clip is None
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert config.resolved_device().type == expected
    assert TrainConfig(device="cpu").resolved_device() == torch.device("cpu")


def test_command_line_options():
    parser = argparse.ArgumentParser()
    add_arguments(parser, TrainConfig)
    arguments = parser.parse_args(
        ["--max-steps", "7", "--betas", "0.8,0.9", "--no-progress", "--grad-clip", "1.5"]
    )
    config = from_arguments(TrainConfig, arguments)
    assert config.max_steps == 7 and config.betas == (0.8, 0.9)
    assert config.progress is False and config.grad_clip == 1.5 and config.out is None


def test_burda_schedule_stages():
    from latentvi.train.schedule import learning_rate

    # Stage i lasts 3^i epochs at lr·10^(−i/7): stage boundaries at epochs 1, 4, 13, 40, ..., 3280.
    boundaries = [0, 1, 4, 13, 40, 121, 364, 1093, 3280]
    for stage, (start, end) in enumerate(itertools.pairwise(boundaries)):
        expected = 1e-3 * 10 ** (-stage / 7)
        assert learning_rate("burda", 1e-3, start) == pytest.approx(expected)
        assert learning_rate("burda", 1e-3, end - 1) == pytest.approx(expected)
    assert learning_rate("burda", 1e-3, 10_000) == pytest.approx(1e-4)
    assert learning_rate("constant", 3e-4, 10_000) == 3e-4
