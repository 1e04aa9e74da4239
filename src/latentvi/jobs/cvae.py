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

The run folder (:mod:`latentvi.train.runs`: kind ``cvae``) holds ``run.json``, the training
loop's checkpoints and metrics (``regressor/`` likewise for the baseline, kind
``cvae-regressor``), ``results.json`` and ``figures/``. Everything is checked before anything is
written: a refused call leaves the folder as it was.
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

from latentvi.config import from_dict, option, require, to_dict
from latentvi.data import Batches, binarize_static, load_dataset
from latentvi.jobs.vae import TEST_BINARIZATION_SEED, DataSource
from latentvi.models.cvae import CVAE, CVAEConfig, Regressor
from latentvi.train import TrainConfig, fit, load_checkpoint
from latentvi.train.lock import run_lock
from latentvi.train.metrics import log_images, read_metrics
from latentvi.train.rng import seed_everything
from latentvi.train.runs import FIGURES, check_run_folder, read_run, write_run
from latentvi.train.storage import replace_text

__all__ = [
    "CVAE_TASKS",
    "CVAEDataConfig",
    "conditional_data",
    "evaluate_cvae",
    "load_cvae",
    "plot_cvae",
    "sample_cvae",
    "train_cvae",
]

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
    configs = {"model": spec["model"], "data": spec["data"], "train": train}
    info = {k: spec[k] for k in ("x_dim", "y_dim", "data_shape")}
    kind = "cvae" if spec["kind"] == "cvae" else "cvae-regressor"
    write_run(out, kind, configs, **info)
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
    if train.out is None:
        return _train_cvae(model_config, data, train)  # refused: out is required
    with run_lock(train.out):  # one writer per run folder
        return _train_cvae(model_config, data, train)


def _train_cvae(model_config: CVAEConfig, data: CVAEDataConfig, train: TrainConfig):
    require(train.out is not None, "out", train.out, "give a run folder, e.g. --out runs/cvae")
    require(
        model_config.likelihood == "bernoulli",
        "likelihood",
        model_config.likelihood,
        "binarized images need --likelihood bernoulli",
    )
    seed_everything(train.seed)  # seed first, then build anything random
    out = Path(train.out)
    check_run_folder(out, resume=False)  # no --resume: a folder with checkpoints is refused
    if data.task == "halves":
        check_run_folder(out / "regressor", resume=False)
    x, y, shape = conditional_data(data, "train", train.seed)
    test_shape = load_dataset(data.dataset, "test", root=data.root).shape
    if tuple(test_shape) != tuple(shape):  # caught now, not after training
        raise ValueError(
            f"dataset = {data.dataset!r} is invalid: its training images are {tuple(shape)} but "
            f"its test images are {tuple(test_shape)}; use files of one image size"
        )
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
    test_x, test_y = _test_pairs(data, data.eval_examples)
    elbo, log_likelihood = _conditional_scores(model, test_x, test_y, data.importance_samples)
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
    if train.tensorboard:
        rows = read_metrics(out)
        images = {f"eval/{Path(p).stem.replace('-', '_')}": p for p in results["figures"]}
        log_images(out, rows[-1]["step"] if rows else 0, images)
    replace_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    return results


def _test_pairs(data: CVAEDataConfig, n_examples: int | None) -> tuple[torch.Tensor, ...]:
    """The first ``n_examples`` (x, y) test pairs, binarized with the evaluation seed."""
    test_x, test_y, _ = conditional_data(data, "test", TEST_BINARIZATION_SEED)
    return test_x[:n_examples], test_y[:n_examples]


def _conditional_scores(model: CVAE, x: torch.Tensor, y: torch.Tensor, importance_samples: int):
    """Per-example ELBO and importance-sampled log p(y|x) ``[N]`` (nats), under the evaluation
    seed, so that the numbers of a run and of its loaded model are the same."""
    torch.manual_seed(TEST_BINARIZATION_SEED)
    with torch.no_grad():
        elbo = torch.cat([model.elbo(a, b) for a, b in _chunks(x, y)])
    log_likelihood = torch.cat(
        [model.log_likelihood(a, b, importance_samples, 100) for a, b in _chunks(x, y)]
    )
    return elbo, log_likelihood


def _chunks(x: torch.Tensor, y: torch.Tensor, size: int = 100):
    for start in range(0, x.shape[0], size):
        yield x[start : start + size], y[start : start + size]


@torch.no_grad()
def _figures(
    model: CVAE, regressor, data: CVAEDataConfig, shape, out: Path, figures: Path | None = None
) -> list[Path]:
    from latentvi.plots import plot_image_grid

    figures = out / FIGURES if figures is None else figures
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


def load_cvae(
    run_dir: str | os.PathLike,
    map_location: str = "cpu",
    checkpoint: str | os.PathLike | None = None,
) -> CVAE | Regressor:
    """The trained model of a ``train cvae`` run folder (or of its ``regressor/`` subfolder), in
    eval mode, with its data config as ``model.data_config``. Reads JSON and safetensors only."""
    run = read_run(run_dir)
    builders = {"cvae": CVAE, "cvae-regressor": Regressor}
    if run.kind not in builders:
        raise ValueError(f"{str(run.path)!r} holds a {run.kind} run, not a cvae or regressor")
    try:
        config = from_dict(CVAEConfig, run.config("model"))
        data = from_dict(CVAEDataConfig, run.config("data"))
        x_dim, y_dim = int(run.info["x_dim"]), int(run.info["y_dim"])
        shape = tuple(int(s) for s in run.info["data_shape"])
    except (KeyError, TypeError) as error:
        raise ValueError(f"{run.path} holds a corrupt {run.kind} run ({error})") from None
    model = builders[run.kind](x_dim, y_dim, config)
    source = run_dir if checkpoint is None else checkpoint
    load_checkpoint(source, model, map_location=map_location, restore_rng=False)
    model.data_config, model.data_shape = data, shape
    return model.eval()


def evaluate_cvae(
    run_dir: str | os.PathLike,
    importance_samples: int | None = None,
    n_examples: int | None = None,
) -> dict[str, Any]:
    """Held-out conditional log-likelihoods of a cvae (or regressor) run, nats per example with
    standard errors: the CVAE's ELBO and importance-sampled log p(y|x) (K = the run's
    ``importance_samples`` unless given), the regressor's exact log p(y|x). The defaults give the
    numbers of the run's ``results.json``."""
    model = load_cvae(run_dir)
    data = model.data_config
    n_examples = data.eval_examples if n_examples is None else n_examples
    require(n_examples >= 1, "n_examples", n_examples, "use N >= 1")
    x, y = _test_pairs(data, n_examples)
    result: dict[str, Any] = {"task": data.task, "test_examples": int(x.shape[0])}
    if isinstance(model, Regressor):
        with torch.no_grad():
            exact = model.log_likelihood(x, y)
        result["regressor_log_likelihood"], result["regressor_log_likelihood_stderr"] = (
            _mean_and_stderr(exact)
        )
    else:
        k = data.importance_samples if importance_samples is None else importance_samples
        require(k >= 1, "importance_samples", k, "use K >= 1")
        elbo, log_likelihood = _conditional_scores(model, x, y, k)
        result["cvae_elbo"], result["cvae_elbo_stderr"] = _mean_and_stderr(elbo)
        result["cvae_log_likelihood"], result["cvae_log_likelihood_stderr"] = _mean_and_stderr(
            log_likelihood
        )
        result["importance_samples"] = k
    result["units"] = "nats per example, summed over the pixels of y"
    return result


@torch.no_grad()
def sample_cvae(run_dir: str | os.PathLike, n: int, out: str | os.PathLike, seed: int = 0) -> Path:
    """``n`` draws of a cvae run as a grid PNG: digit i mod 10 for ``label`` runs (decoder means
    of z ~ p(z|digit)); for ``halves`` runs, test top halves completed by samples."""
    from latentvi.plots import plot_image_grid

    require(n >= 1, "n", n, "use a positive number of samples")
    model = load_cvae(run_dir)
    if isinstance(model, Regressor):
        raise ValueError(f"{str(run_dir)!r} holds the deterministic regressor: it has no samples")
    data, shape = model.data_config, model.data_shape
    torch.manual_seed(seed)
    if data.task == "label":
        labels = torch.arange(n) % NUM_CLASSES
        images = model.sample(F.one_hot(labels, NUM_CLASSES).float(), mean=True)
        return plot_image_grid(
            images.reshape(-1, *shape), out, "p(image | digit), digit = i mod 10"
        )
    top, _ = _test_pairs(data, n)
    bottom = model.sample(top, mean=True)
    channels, height, width = shape
    images = torch.cat(
        [top.reshape(-1, channels, height // 2, width),
         bottom.reshape(-1, channels, height - height // 2, width)], -2
    )  # fmt: skip
    return plot_image_grid(images, out, "test top halves completed by p(bottom | top)")


def plot_cvae(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> list[Path]:
    """The run's figure (samples per digit, or completed halves beside the regressor's) into
    ``out`` (default ``RUN/figures``)."""
    model = load_cvae(run_dir)
    if isinstance(model, Regressor):
        raise ValueError(
            f"{str(run_dir)!r} holds the regressor alone: plot its cvae run, the folder above"
        )
    run = Path(run_dir)
    regressor = None
    if model.data_config.task == "halves":
        regressor = load_cvae(run / "regressor")
    folder = Path(out) if out is not None else run / FIGURES
    return _figures(model, regressor, model.data_config, model.data_shape, folder.parent, folder)
