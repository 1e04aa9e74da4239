"""VAE jobs behind ``latentvi train vae``, ``eval``, ``sample`` and ``plot``, and :func:`load`.

A run folder (the schema of :mod:`latentvi.train.runs`) holds everything needed to rebuild the
model without running code from it: ``run.json`` (kind ``vae``, the data shape, the model, data
and training configs), ``config.json`` (the resolved training config), ``checkpoints/step-*/``
(safetensors weights and JSON state), ``metrics.jsonl`` / ``metrics.csv`` and TensorBoard
scalars. :func:`load` reads ``run.json`` (or an older run's ``model.json``) and the latest
checkpoint's ``model.safetensors`` only.
"""

from __future__ import annotations

import dataclasses
import math
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from latentvi.config import from_dict, option, require, to_dict
from latentvi.data import DATASETS, Batches, ImageDataset, binarize_static, load_dataset
from latentvi.memory import mlp_parameters, require_memory, training_bytes
from latentvi.models.vae import VAE, VAEConfig
from latentvi.progress import progress_bar
from latentvi.train import TrainConfig, fit, load_checkpoint
from latentvi.train.distributed import current
from latentvi.train.lock import run_lock
from latentvi.train.metrics import log_images
from latentvi.train.rng import isolated_rng, seed_everything
from latentvi.train.runs import check_run_folder, read_run, write_run

__all__ = [
    "DataConfig",
    "DataSource",
    "evaluate_run",
    "load",
    "load_data",
    "plot_run",
    "sample_run",
    "train_vae",
]

BINARIZE = ("dynamic", "static", "none")
TEST_BINARIZATION_SEED = 0


@dataclasses.dataclass(frozen=True)
class DataSource:
    """Which data set, and how many examples per optimizer step: the part every image
    experiment's data config shares (:class:`DataConfig`, the CVAE's ``CVAEDataConfig``)."""

    dataset: str = option(
        "mnist", "data set: mnist, fashion-mnist, digits or idx", choices=DATASETS
    )
    root: str | None = option(None, "folder of idx files (for idx, or to override a data set)")
    batch_size: int = option(100, "examples per optimizer step")

    def __post_init__(self) -> None:
        require(
            self.dataset in DATASETS,
            "dataset",
            self.dataset,
            f"choose one of {', '.join(DATASETS)}",
        )
        require(self.batch_size >= 1, "batch_size", self.batch_size, "use a positive integer")
        require(
            self.dataset != "idx" or self.root is not None,
            "root",
            self.root,
            "the idx data set needs --root pointing at a folder of idx files",
        )


@dataclasses.dataclass(frozen=True)
class DataConfig(DataSource):
    """Which data set to train on and how to present it."""

    binarize: str = option(
        "dynamic",
        "dynamic: a fresh Bernoulli draw of every image each epoch (Burda et al.); static: one "
        "fixed draw; none: keep intensities (use a gaussian or continuous-bernoulli likelihood)",
        choices=BINARIZE,
    )
    validation: bool = option(
        False, "hold out a validation split (MNIST: 50k/10k) and validate on it instead of test"
    )
    valid_examples: int = option(2000, "examples used by each periodic validation pass")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.binarize in BINARIZE, "binarize", self.binarize, f"choose one of {BINARIZE}")
        require(
            self.valid_examples >= 1,
            "valid_examples",
            self.valid_examples,
            "use a positive integer",
        )


def load_data(data: DataConfig, split: str) -> ImageDataset:
    """The split (``train``, ``valid`` or ``test``) of the configured data set."""
    return load_dataset(data.dataset, split, validation=data.validation, root=data.root)


def _evaluation_images(data: DataConfig, dataset: ImageDataset) -> torch.Tensor:
    """Held-out images as the model sees them: binarized once with a fixed seed when training
    binarizes (the usual protocol for dynamically binarized MNIST), else as they are."""
    if data.binarize == "none":
        return dataset.images
    return binarize_static(dataset.images, TEST_BINARIZATION_SEED)


def _check_likelihood(model_config: VAEConfig, data: DataConfig) -> None:
    binary = data.binarize != "none"
    require(
        not binary or model_config.likelihood == "bernoulli",
        "likelihood",
        model_config.likelihood,
        "binarized data needs the bernoulli likelihood (or pass --binarize none)",
    )
    require(
        binary or model_config.likelihood != "bernoulli",
        "likelihood",
        model_config.likelihood,
        "intensities (--binarize none) need gaussian, gaussian-fixed or continuous-bernoulli",
    )


def _check_memory(model: VAEConfig, data: DataConfig, shape) -> None:
    """Refuse (one line) a model whose weights cannot be trained in this machine's memory."""
    features = math.prod(int(s) for s in shape)
    hidden = [int(h) for h in model.hidden]
    if model.body == "conv":
        hidden = [features * max(int(c) for c in model.channels)]
    two_layer = model.stochastic_layers == 2
    bottom = model.latent_dim_1 if two_layer else model.latent_dim
    parameters = mlp_parameters([features, *hidden, 2 * bottom])
    parameters += mlp_parameters([bottom, *reversed(hidden), 2 * features])
    if two_layer:
        hidden_1 = [int(h) for h in model.hidden_1]
        parameters += mlp_parameters([bottom, *hidden_1, 2 * model.latent_dim])
        parameters += mlp_parameters([model.latent_dim, *reversed(hidden_1), 2 * bottom])
    activations = data.batch_size * model.num_samples * (features + sum(hidden) + 3 * bottom)
    require_memory(
        training_bytes(parameters, activations),
        f"a VAE of {parameters:.3g} weights on {features}-pixel images",
        ("latent_dim", "hidden", "latent_dim_1", "hidden_1", "batch_size"),
        "use smaller sizes",
    )


def train_vae(
    model_config: VAEConfig,
    data: DataConfig,
    train: TrainConfig,
    resume: bool = False,
) -> dict[str, Any]:
    """Train a VAE; return the training result summary (JSON-ready). Everything is checked
    before anything is written: a refused call leaves ``train.out`` as it was."""
    _check_likelihood(model_config, data)
    require(train.out is not None, "out", train.out, "give a run folder, e.g. --out runs/vae")
    configs = {"model": model_config, "data": data, "train": train}
    check_run_folder(
        train.out, resume, kind="vae", configs=configs, fixed=("model", "data"),
        ignore={"data": ("root", "valid_examples")},
    )  # fmt: skip
    seed_everything(train.seed)  # seed first: the model's initial weights come from it
    train_set = load_data(data, "train")
    held_out = load_data(data, "valid" if data.validation else "test")
    if held_out.shape != train_set.shape:  # caught now, not after training
        raise ValueError(
            f"dataset = {data.dataset!r} is invalid: its training images are {train_set.shape} "
            f"but its held-out images are {held_out.shape}; use files of one image size"
        )
    images = train_set.images
    if data.binarize == "static":
        images = binarize_static(images, train.seed)
    dynamic = "dynamic" if data.binarize == "dynamic" else None
    valid_images = _evaluation_images(data, held_out)[: data.valid_examples]

    _check_memory(model_config, data, train_set.shape)
    info = current()  # this process's rank and the world size (1 without torchrun)
    batches = Batches(
        images,
        batch_size=data.batch_size,
        binarize=dynamic,
        rank=info.rank,
        world_size=info.world_size,
    )

    def make_batches(epoch, generator, *, start=0, rank=info.rank, world_size=info.world_size):
        # fit passes this process's own rank and world size: the shard built above.
        return batches.iterate(generator, start=start)

    def make_valid_batches():
        return Batches(valid_images, batch_size=500, shuffle=False).iterate()

    model = VAE(train_set.shape, model_config)
    out = Path(train.out)
    spec = {
        "kind": "vae",
        "data_shape": list(train_set.shape),
        "model": to_dict(model_config),
        "data": to_dict(data),
    }
    with run_lock(out) if info.is_main else nullcontext():  # one writer per run folder
        if info.is_main and not resume:
            write_run(out, "vae", configs, data_shape=list(train_set.shape))
        result = fit(
            model,
            make_batches,
            batches.num_batches,
            train,
            make_valid_batches=make_valid_batches,
            resume=resume,
            extra_config=spec,
        )
        if info.is_main and train.tensorboard:
            _log_figures(model, valid_images, out, result.steps)
    return {
        "run_dir": str(out),
        "steps": result.steps,
        "epochs": result.epochs,
        "metrics": result.metrics,
        "last_checkpoint": str(result.last_checkpoint),
    }


@torch.no_grad()
def _log_figures(model: VAE, images: torch.Tensor, out: Path, step: int) -> None:
    """Reconstructions of held-out images and prior samples: PNGs in ``RUN/figures`` and
    TensorBoard images (``eval/reconstructions``, ``eval/samples``), under their own seed."""
    from latentvi.plots import plot_image_grid

    model.eval()
    with isolated_rng(TEST_BINARIZATION_SEED):
        originals = images[:16].to(next(model.parameters()).device)
        pairs = torch.stack([originals, model.reconstruct(originals)], 1).flatten(0, 1)
        figures = out / "figures"
        drawn = {
            "eval/reconstructions": plot_image_grid(
                pairs.cpu(), figures / "reconstructions.png", "data | reconstruction", columns=16
            ),
            "eval/samples": plot_image_grid(
                model.sample(64, mean=True).cpu(), figures / "samples.png", "p(x) samples"
            ),
        }
    log_images(out, step, drawn)


def _read_spec(run_dir: str | os.PathLike) -> dict[str, Any]:
    run = read_run(run_dir)
    if run.kind != "vae":
        raise ValueError(f"{str(run.path)!r} holds a {run.kind} run, not a vae run")
    try:
        model = from_dict(VAEConfig, run.config("model"))
        data = from_dict(DataConfig, run.config("data"))
        shape = run.info["data_shape"]
        if not (
            isinstance(shape, list)
            and len(shape) == 3
            and all(type(s) is int and 1 <= s <= 1 << 16 for s in shape)
        ):
            raise TypeError(f"data_shape {shape!r:.60} is not [C, H, W] of sizes 1..65536")
    except (KeyError, TypeError) as error:
        raise ValueError(f"{run.path} holds a corrupt vae run ({error}); retrain it") from None
    except ValueError as error:
        raise ValueError(f"{run.path} holds an invalid vae run ({error}); retrain it") from None
    _check_memory(model, data, shape)  # a forged latent_dim of 1e12 is refused, not allocated
    return {"model": model, "data": data, "data_shape": tuple(shape)}


def load(
    run_dir: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    checkpoint: str | os.PathLike | None = None,
) -> VAE:
    """The trained model of a run folder, in eval mode: the weights of ``checkpoint`` (a folder
    such as ``RUN/checkpoints/step-001000``), or of the latest checkpoint when None.

    Reads only JSON and safetensors: loading runs no code from the folder.
    """
    spec = _read_spec(run_dir)
    model = VAE(spec["data_shape"], spec["model"])
    source = run_dir if checkpoint is None else checkpoint
    load_checkpoint(source, model, map_location=map_location, restore_rng=False)
    model.data_config = spec["data"]
    return model.eval()


@torch.no_grad()
def evaluate_run(
    run_dir: str | os.PathLike,
    importance_samples: int = 5000,
    n_examples: int | None = None,
    batch_size: int = 100,
    chunk_size: int = 500,
    split: str = "test",
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Held-out ELBO and importance-sampled log-likelihood, nats per example, with standard errors.

    Each example's log p(x) is estimated with ``importance_samples`` draws from q(z|x) (Burda et
    al. 2016, eq. 2); the standard errors are those of the mean over examples (they include the
    Monte Carlo noise of each example's estimate).
    """
    require(importance_samples >= 1, "importance_samples", importance_samples, "use K >= 1")
    require(n_examples is None or n_examples >= 1, "n_examples", n_examples, "use N >= 1")
    model = load(run_dir, checkpoint=checkpoint)
    data = model.data_config
    images = _evaluation_images(data, load_data(data, split))
    if n_examples is not None:
        images = images[:n_examples]
    torch.manual_seed(TEST_BINARIZATION_SEED)
    elbos, log_likelihoods = [], []
    for start in progress_bar(
        range(0, images.shape[0], batch_size), show=progress, desc="eval", unit="batch"
    ):
        x = images[start : start + batch_size]
        elbos.append(model.elbo(x))
        chunk = min(chunk_size, importance_samples)
        log_likelihoods.append(model.log_likelihood(x, importance_samples, chunk))
    elbo, log_likelihood = torch.cat(elbos).double(), torch.cat(log_likelihoods).double()
    n = elbo.shape[0]
    return {
        "elbo": elbo.mean().item(),
        "log_likelihood": log_likelihood.mean().item(),
        "elbo_stderr": (elbo.std() / math.sqrt(n)).item() if n > 1 else 0.0,
        "log_likelihood_stderr": (log_likelihood.std() / math.sqrt(n)).item() if n > 1 else 0.0,
        "n_examples": n,
        "importance_samples": importance_samples,
        "split": split,
        "units": "nats per example",
    }


@torch.no_grad()
def sample_run(run_dir: str | os.PathLike, n: int, out: str | os.PathLike, seed: int = 0) -> Path:
    """Draw ``n`` images from the model (decoder means) and save them as a grid PNG."""
    from latentvi.plots import plot_image_grid

    require(n >= 1, "n", n, "use a positive number of samples")
    model = load(run_dir)
    torch.manual_seed(seed)
    images = model.sample(n, mean=True)
    return plot_image_grid(images, out, title=f"{n} samples from p(x)")


@torch.no_grad()
def plot_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> list[Path]:
    """Reconstructions, prior samples, the latent manifold (2-D latents), a posterior-mean scatter
    coloured by label, and the training curves. Returns the written files."""
    from latentvi.plots import plot_image_grid, plot_latent_scatter, plot_training_curves
    from latentvi.train import read_metrics

    model = load(run_dir)
    out = Path(out) if out is not None else Path(run_dir) / "figures"
    data = model.data_config
    test = load_data(data, "test")
    images = _evaluation_images(data, test)
    torch.manual_seed(0)
    written = []
    originals = images[:32]
    pairs = torch.stack([originals, model.reconstruct(originals)], 1).flatten(0, 1)
    written.append(
        plot_image_grid(pairs, out / "reconstructions.png", "data | reconstruction", columns=16)
    )
    written.append(
        plot_image_grid(model.sample(64, mean=True), out / "samples.png", "p(x) samples")
    )
    if model.config.latent_dim == 2 and model.config.stochastic_layers == 1:
        grid = torch.linspace(-2.5, 2.5, 15)
        z = torch.stack(torch.meshgrid(grid, grid.flip(0), indexing="xy"), -1).reshape(-1, 2)
        manifold = model.decode(z).mean
        written.append(
            plot_image_grid(manifold, out / "manifold.png", "latent manifold", columns=15)
        )
    subset = slice(0, 5000)
    q = model.encode(images[subset])
    means = q.mean if model.config.stochastic_layers == 1 else q.first.mean
    if means.shape[-1] > 2:
        centred = means - means.mean(0)
        _, _, basis = torch.linalg.svd(centred, full_matrices=False)
        means, title = centred @ basis[:2].T, "posterior means (first two principal components)"
    else:
        title = "posterior means"
    written.append(plot_latent_scatter(means, test.labels[subset], out / "latent.png", title))
    records = read_metrics(run_dir)
    keys = [
        k
        for k in ("train/elbo", "eval/elbo", "train/iwae", "eval/iwae")
        if any(k in r for r in records)
    ]
    if keys:
        written.append(plot_training_curves(records, keys, out / "curves.png", "training"))
    return written
