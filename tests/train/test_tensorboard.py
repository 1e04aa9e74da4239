"""TensorBoard: one tag scheme across jobs, the configs once as hparams, figures as images."""

from __future__ import annotations

import pytest

from latentvi.cli import main
from latentvi.train import MetricsLogger
from latentvi.train.metrics import NAMESPACES, log_images

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

WORLD_TINY = ["--preset", "debug", "--eval-episodes", "1", "--no-progress", "--candidates", "32",
              "--cem-iterations", "2", "--steps", "400"]  # fmt: skip


def _events(run_dir):
    accumulator = event_accumulator.EventAccumulator(
        str(run_dir / "tensorboard"), size_guidance={event_accumulator.IMAGES: 0}
    )
    accumulator.Reload()
    return accumulator


def _check(run_dir, images: set[str]) -> set[str]:
    """The scalar tags of ``run_dir``: all namespaced; the hparams written once; ``images``."""
    events = _events(run_dir)
    tags = events.Tags()
    assert tags["scalars"] and all(tag.startswith(NAMESPACES) for tag in tags["scalars"])
    assert set(tags["images"]) == images
    hparams = events.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hparams)
    return set(tags["scalars"])


def test_un_namespaced_metrics_are_refused(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        for name in ("elbo", "kl", "loss", "vae/elbo"):
            with pytest.raises(ValueError, match="no namespace"):
                logger.log(1, {name: 1.0})
    with pytest.raises(ValueError, match="no namespace"):
        log_images(tmp_path, 0, {"samples": tmp_path / "x.png"})


def test_hparams_hold_the_flattened_configs(tmp_path):
    configs = {"model": {"hidden": (32, 16), "beta": 0.5, "prior": None}, "seed": 3}
    with MetricsLogger(tmp_path, hparams=configs) as logger:
        logger.log(1, {"loss/total": 1.0})
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = _events(tmp_path).PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    values = {
        k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
        for k, v in start.hparams.items()
    }
    assert values == {
        "model.hidden": "[32, 16]",
        "model.beta": 0.5,
        "model.prior": "None",
        "seed": 3,
    }


def test_a_world_model_run_writes_namespaced_scalars_images_and_hparams(tmp_path):
    out = tmp_path / "dreamer"
    argv = ["world-model", "train", "--agent", "dreamer", *WORLD_TINY, "--out", str(out)]
    assert main(argv) == 0
    scalars = _check(out, {"eval/open_loop", "eval/frames"})
    # the Dreamer run used to mix loss/recon with bare kl, elbo and loss
    assert {"loss/recon", "loss/kl", "loss/total", "train/kl", "train/elbo"} <= scalars


def test_a_supervised_run_writes_namespaced_scalars_images_and_hparams(tmp_path):
    argv = ["train", "cvae", "--dataset", "digits", "--task", "label", "--max-steps", "20",
            "--eval-examples", "50", "--importance-samples", "20", "--no-progress",
            "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    scalars = _check(tmp_path, {"eval/samples_per_digit"})
    assert {"loss/total", "train/loss/kl", "train/elbo"} <= scalars


def test_train_vae_writes_reconstructions_and_samples_as_images(tmp_path):
    argv = ["train", "vae", "--dataset", "digits", "--latent-dim", "2", "--hidden", "32",
            "--max-steps", "20", "--no-progress", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    scalars = _check(tmp_path, {"eval/reconstructions", "eval/samples"})
    assert {"loss/total", "train/elbo"} <= scalars
    assert (tmp_path / "figures" / "reconstructions.png").stat().st_size > 0
