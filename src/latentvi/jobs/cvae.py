"""CVAE jobs behind ``latentvi train cvae``: label-conditional generation and structured prediction.

Two conditional problems on binarized images (one fixed Bernoulli draw per image: seed
``train.seed`` for training, 0 for the test set):

* ``label`` — x = the one-hot digit label, y = the image: p(image | digit). The figure has one row
  of samples per digit.
* ``halves`` — x = the top half of the image, y = the bottom half (the structured-prediction task
  of Sohn, Lee & Yan 2015): p(bottom | top) may have several modes (the top of a 3 or a 5 ...). A
  deterministic :class:`~latentvi.models.cvae.Regressor` (per-pixel Bernoulli logistic outputs,
  same hidden sizes) is trained on the same data, and both conditional log-likelihoods are
  reported on test images in nats: the CVAE's importance-sampled log p(y|x) (and its ELBO), the
  regressor's exact log p(y|x). The figure shows, per test image, the given top half completed by
  the truth, by the regressor and by CVAE samples.

The run folder holds ``model.json``, the training loop's checkpoints and metrics
(``regressor/`` likewise for the baseline), ``results.json`` and ``figures/``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from latentvi.config import option, require, to_dict
from latentvi.data import Batches, binarize_static, load_dataset
from latentvi.jobs.vae import MODEL_FILE, TEST_BINARIZATION_SEED, DataSource
from latentvi.models.cvae import CVAE, CVAEConfig, Regressor
from latentvi.train import TrainConfig, fit, load_checkpoint
from latentvi.train.rng import seed_everything
from latentvi.train.storage import replace_text

__all__ = ["CVAE_TASKS", "CVAEDataConfig", "conditional_data", "load_cvae", "train_cvae"]

CVAE_TASKS = ("label", "halves")
NUM_CLASSES = 10


@dataclasses.dataclass(frozen=True)
class CVAEDataConfig(DataSource):
    """Which data set, which conditional task, and how much of it to evaluate."""

    task: str = option(
        "label", "label: p(image | digit); halves: p(bottom half | top half)", choices=CVAE_TASKS
    )
    eval_examples: int = option(1000, "test examples for the conditional log-likelihoods")
    importance_samples: int = option(200, "K of the importance-sampled log p(y|x)")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.task in CVAE_TASKS, "task", self.task, f"choose one of {', '.join(CVAE_TASKS)}"
        )
        for name in ("eval_examples", "importance_samples"):
            value = getattr(self, name)
            require(value >= 1, name, value, "use a positive integer")


def conditional_data(
    data: CVAEDataConfig, split: str, seed: int
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int, int]]:
    """``(x [N, X], y [N, Y], image shape)`` of a split, the images binarized with ``seed``."""
    dataset = load_dataset(data.dataset, split, root=data.root)
    images = binarize_static(dataset.images, seed)  # (N, C, H, W) in {0, 1}
    if data.task == "label":
        return F.one_hot(dataset.labels, NUM_CLASSES).float(), images.flatten(1), dataset.shape
    top, bottom = _halves(images)
    return top.flatten(1), bottom.flatten(1), dataset.shape


def _halves(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    half = images.shape[-2] // 2
    return images[..., :half, :], images[..., half:, :]


def _fit(model, x, y, data: CVAEDataConfig, train: TrainConfig, out: Path, spec: dict):
    batches = Batches(x, y, batch_size=data.batch_size)
    out.mkdir(parents=True, exist_ok=True)
    replace_text(out / MODEL_FILE, json.dumps(spec, indent=2) + "\n")
    config = dataclasses.replace(train, out=str(out))
    start = time.perf_counter()
    fit(
        model,
        batches.make_batches,
        batches,
        config,
        extra_config=spec,
    )
    return model.eval(), time.perf_counter() - start


def _mean_and_stderr(values: torch.Tensor) -> tuple[float, float]:
    values = values.double()
    n = values.numel()
    return values.mean().item(), (values.std() / math.sqrt(n)).item() if n > 1 else 0.0


def train_cvae(
    model_config: CVAEConfig, data: CVAEDataConfig, train: TrainConfig
) -> dict[str, Any]:
    """Train the CVAE (and, for ``halves``, the regressor), evaluate, plot; JSON-ready summary."""
    require(train.out is not None, "out", train.out, "give a run folder, e.g. --out runs/cvae")
    require(
        model_config.likelihood == "bernoulli",
        "likelihood",
        model_config.likelihood,
        "binarized images need --likelihood bernoulli",
    )
    seed_everything(train.seed)  # seed first, then build anything random
    out = Path(train.out)
    x, y, shape = conditional_data(data, "train", train.seed)
    spec = {
        "kind": "cvae",
        "x_dim": x.shape[1],
        "y_dim": y.shape[1],
        "data_shape": list(shape),
        "model": to_dict(model_config),
        "data": to_dict(data),
    }
    torch.manual_seed(train.seed)
    model, seconds = _fit(CVAE(x.shape[1], y.shape[1], model_config), x, y, data, train, out, spec)
    test_x, test_y, _ = conditional_data(data, "test", TEST_BINARIZATION_SEED)
    test_x, test_y = test_x[: data.eval_examples], test_y[: data.eval_examples]
    torch.manual_seed(TEST_BINARIZATION_SEED)
    with torch.no_grad():
        elbo = torch.cat([model.elbo(a, b) for a, b in _chunks(test_x, test_y)])
    log_likelihood = torch.cat(
        [
            model.log_likelihood(a, b, data.importance_samples, 100)
            for a, b in _chunks(test_x, test_y)
        ]
    )
    results: dict[str, Any] = {
        "run_dir": str(out),
        "task": data.task,
        "dataset": data.dataset,
        "train_seconds": seconds,
        "test_examples": int(test_x.shape[0]),
        "importance_samples": data.importance_samples,
        "units": "nats per example, summed over the pixels of y",
    }
    results["cvae_elbo"], results["cvae_elbo_stderr"] = _mean_and_stderr(elbo)
    results["cvae_log_likelihood"], results["cvae_log_likelihood_stderr"] = _mean_and_stderr(
        log_likelihood
    )
    regressor = None
    if data.task == "halves":
        torch.manual_seed(train.seed)
        regressor_spec = {**spec, "kind": "regressor"}
        regressor, regressor_seconds = _fit(
            Regressor(x.shape[1], y.shape[1], model_config),
            x,
            y,
            data,
            train,
            out / "regressor",
            regressor_spec,
        )
        exact = regressor.log_likelihood(test_x, test_y)
        results["regressor_log_likelihood"], results["regressor_log_likelihood_stderr"] = (
            _mean_and_stderr(exact)
        )
        results["regressor_train_seconds"] = regressor_seconds
        gain = log_likelihood - exact
        results["gain"], results["gain_stderr"] = _mean_and_stderr(gain)
    results["figures"] = [str(p) for p in _figures(model, regressor, data, shape, out)]
    replace_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    return results


def _chunks(x: torch.Tensor, y: torch.Tensor, size: int = 100):
    for start in range(0, x.shape[0], size):
        yield x[start : start + size], y[start : start + size]


@torch.no_grad()
def _figures(model: CVAE, regressor, data: CVAEDataConfig, shape, out: Path) -> list[Path]:
    from latentvi.plots import plot_image_grid

    figures = out / "figures"
    torch.manual_seed(0)
    if data.task == "label":
        columns = 10
        labels = torch.arange(NUM_CLASSES).repeat_interleave(columns)
        images = model.sample(F.one_hot(labels, NUM_CLASSES).float(), mean=True)
        path = plot_image_grid(
            images.reshape(-1, *shape),
            figures / "samples-per-digit.png",
            "p(image | digit): one row per digit (decoder means of z ~ p(z|digit))",
            columns=columns,
            row_labels=[f"digit {digit}" for digit in range(NUM_CLASSES)],
        )
        return [path]
    test_x, test_y, _ = conditional_data(data, "test", TEST_BINARIZATION_SEED)
    n, draws = 8, 6
    top = test_x[:n]
    channels, height, width = shape
    top_shape = (channels, height // 2, width)
    bottom_shape = (channels, height - height // 2, width)

    def join(bottom: torch.Tensor) -> torch.Tensor:
        parts = (top.reshape(-1, *top_shape), bottom.reshape(-1, *bottom_shape))
        return torch.cat(parts, -2)

    columns = [join(test_y[:n]), join(torch.sigmoid(regressor.body(top)))]
    columns += [join(model.sample(top, mean=True)) for _ in range(draws)]
    grid = torch.stack(columns, 1).flatten(0, 1)  # (n · (2 + draws), C, H, W)
    path = plot_image_grid(
        grid,
        figures / "halves.png",
        f"truth | regressor's mean | {draws} CVAE samples (decoder means); top half given",
        columns=2 + draws,
    )
    return [path]


def load_cvae(run_dir: str | os.PathLike, map_location: str = "cpu") -> CVAE | Regressor:
    """The trained model of a ``train cvae`` run folder (or of its ``regressor/`` subfolder), in
    eval mode, with its data config as ``model.data_config``. Reads JSON and safetensors only."""
    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise ValueError(f"{path} is missing: {str(run_dir)!r} is not a train cvae run folder")
    try:
        spec = json.loads(path.read_text())
        kind, x_dim, y_dim = spec["kind"], spec["x_dim"], spec["y_dim"]
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["model"].items()}
        data = CVAEDataConfig(**spec["data"])
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is corrupt ({error}); retrain or restore it") from None
    builders = {"cvae": CVAE, "regressor": Regressor}
    if kind not in builders:
        raise ValueError(f"{path}: model kind {kind!r} is not a cvae or regressor")
    model = builders[kind](x_dim, y_dim, CVAEConfig(**fields))
    load_checkpoint(run_dir, model, map_location=map_location, restore_rng=False)
    model.data_config = data
    return model.eval()
