"""The one run-folder schema of latentvi: every training command writes the same layout, and
reading it back needs only JSON (no code runs from a run folder).

Layout of a run folder, whatever its kind::

    RUN/
      run.json          the index (this module): {"format": "latentvi-run-1", "kind": KIND,
                        "configs": {name: resolved config}, "info": {shapes the model is built
                        from}}; written once, when a fresh run starts and after every check has
                        passed; a resumed run keeps it (its model-defining configs must match)
      config.json       the resolved config of the latest (re)start (the loop's view of the run)
      metrics.jsonl     training and evaluation metrics (metrics.csv and tensorboard/ beside it)
      checkpoints/      step-*/: safetensors + JSON (:mod:`latentvi.train.checkpoint`)
      summary.json      the job's final numbers (results.json for cvae and imitation runs)
      figures/          what ``latentvi plot RUN`` draws (train vae/cvae draw theirs here too)

Kinds (``KINDS``): ``vae``, ``cvae``, ``cvae-regressor`` (the ``regressor/`` folder of a
``--task halves`` CVAE run), ``imitation`` (the job's folder lists its per-seed runs in
``info["runs"]``; each ``seed-N/`` is an imitation run of one policy), ``latent-q``,
``world-model`` (``info["agent"]``: planet, dreamer or slac) and ``e2c``.

:func:`read_run` also reads the folders written before this schema (``model.json`` of VAE and
CVAE runs; the ``config.json`` of world-model, latent-Q, imitation and E2C runs), so old runs in
``benchmarks/`` still open.

Every training command validates before it writes: :func:`check_run_folder` refuses a fresh run
into a folder that holds checkpoints, a resume without one, and a resume whose model-defining
configs differ from the run's; it writes nothing, so a refused command leaves the folder
byte-identical.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from latentvi.config import to_dict
from latentvi.train.checkpoint import find_latest
from latentvi.train.lock import check_unlocked
from latentvi.train.storage import parse_json, replace_text

__all__ = [
    "FIGURES",
    "KINDS",
    "RUN_FILE",
    "Run",
    "check_run_folder",
    "check_writable",
    "read_run",
    "run_record",
    "space_info",
    "write_run",
]

RUN_FILE = "run.json"
FORMAT = "latentvi-run-1"
FIGURES = "figures"
KINDS = ("vae", "cvae", "cvae-regressor", "imitation", "latent-q", "world-model", "e2c")
_LEGACY_MODEL_FILE = "model.json"
_LEGACY_KINDS = {"vae": "vae", "cvae": "cvae", "regressor": "cvae-regressor"}


@dataclasses.dataclass(frozen=True)
class Run:
    """A run folder's index: its kind, its resolved configs (JSON dicts by name, e.g. ``model``,
    ``data``, ``train``, ``run``, ``agent``) and the shapes its model is built from."""

    path: Path
    kind: str
    configs: dict[str, dict[str, Any]]
    info: dict[str, Any]

    def config(self, name: str) -> dict[str, Any]:
        """The config ``name`` (a JSON dict); ValueError naming the file when it is missing."""
        if name not in self.configs:
            raise ValueError(
                f"{self.path / RUN_FILE} has no {name!r} config (it has "
                f"{', '.join(sorted(self.configs)) or 'none'}); the run folder is incomplete"
            )
        return self.configs[name]


def _as_json(config: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(config):
        return to_dict(config)
    return json.loads(json.dumps(dict(config), default=str))


def run_record(kind: str, configs: Mapping[str, Any], **info: Any) -> dict[str, Any]:
    """The JSON of ``run.json``: ``configs`` maps names to dataclass configs (or dicts)."""
    if kind not in KINDS:
        raise ValueError(f"kind = {kind!r} is invalid: use one of {', '.join(KINDS)}")
    return {
        "format": FORMAT,
        "kind": kind,
        "configs": {name: _as_json(config) for name, config in configs.items()},
        "info": json.loads(json.dumps(info, default=str)),
    }


def write_run(out: str | os.PathLike, kind: str, configs: Mapping[str, Any], **info: Any) -> Path:
    """Create ``out`` and write its ``run.json`` atomically. Call it only after every check of
    the command has passed (:func:`check_run_folder`)."""
    record = run_record(kind, configs, **info)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RUN_FILE
    replace_text(path, json.dumps(record, indent=2) + "\n")
    return path


def space_info(space: Any) -> dict[str, Any]:
    """A JSON description of a Gymnasium ``Discrete`` (``{"n"}``) or ``Box`` space (``shape``,
    ``dtype``, ``low``, ``high``: flat lists, or one number when every entry is the same): what
    an agent is built from, kept in ``run.json``."""
    if hasattr(space, "n"):
        return {"n": int(space.n)}

    def bound(values) -> float | list[float]:
        flat = [float(v) for v in values.reshape(-1)]
        return flat[0] if len(set(flat)) == 1 else flat

    shape = [int(s) for s in space.shape]
    return {
        "shape": shape,
        "dtype": str(space.dtype),
        "low": bound(space.low),
        "high": bound(space.high),
    }


def _read_json(path: Path) -> Any:
    try:
        value = parse_json(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        message = " ".join(str(error).split())
        raise ValueError(f"{path} is corrupt ({message}); retrain or restore it") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} is corrupt (not a JSON object); retrain or restore it")
    return value


def read_run(run_dir: str | os.PathLike) -> Run:
    """The index of a run folder: its ``run.json``, or the files of the older formats."""
    path = Path(run_dir)
    if not path.is_dir():
        raise ValueError(f"run folder {str(path)!r} does not exist: train one first")
    index = path / RUN_FILE
    if index.is_file():
        record = _read_json(index)
        try:
            kind, configs, info = record["kind"], record["configs"], record.get("info", {})
            if record.get("format") != FORMAT:
                raise KeyError(f"format {record.get('format')!r}, expected {FORMAT!r}")
            if not isinstance(configs, dict) or not isinstance(info, dict):
                raise TypeError("'configs' and 'info' must be objects")
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{index} is corrupt ({error}); retrain or restore it") from None
        if kind not in KINDS:
            raise ValueError(f"{index}: unknown run kind {kind!r} (known: {', '.join(KINDS)})")
        return Run(path, kind, configs, info)
    legacy = _read_legacy(path)
    if legacy is None:
        raise ValueError(
            f"{index} is missing: {str(path)!r} is not a latentvi run folder (train one first)"
        )
    return legacy


def _read_legacy(path: Path) -> Run | None:
    """A run written before run.json existed, or None when ``path`` holds none."""
    try:
        return _legacy(path)
    except (KeyError, TypeError, AttributeError, IndexError) as error:
        raise ValueError(
            f"{path} holds an older run whose files are incomplete or corrupt ({error}); "
            "retrain or restore it"
        ) from None


def _legacy(path: Path) -> Run | None:
    model_file = path / _LEGACY_MODEL_FILE
    config_file = path / "config.json"
    if model_file.is_file():  # train vae / train cvae
        spec = _read_json(model_file)
        kind = spec["kind"]
        if kind not in _LEGACY_KINDS:
            raise ValueError(f"{model_file}: unknown model kind {kind!r}")
        configs = {"model": spec["model"], "data": spec["data"]}
        info = {k: spec[k] for k in ("data_shape", "x_dim", "y_dim") if k in spec}
        return Run(path, _LEGACY_KINDS[kind], configs, info)
    if not config_file.is_file():
        results = path / "results.json"
        if results.is_file():  # the folder of an imitate job
            spec = _read_json(results)
            if "policy" in spec.get("config", {}):
                runs = [f"seed-{seed}" for seed in spec["seeds"]]
                info = {"task": spec["task"], "runs": runs}
                return Run(path, "imitation", dict(spec["config"]), info)
        return None
    spec = _read_json(config_file)
    if isinstance(spec.get("agent"), str):  # world-model train (planet, dreamer, slac)
        agent = spec["agent"]
        configs = {
            "run": spec["run"],
            "model": spec["model"],
            "training": spec["training"],
            "agent": spec[agent],
        }
        return Run(path, "world-model", configs, {"agent": agent})
    if isinstance(spec.get("agent"), dict) and "run" in spec:  # rl latent-q
        return Run(path, "latent-q", {"agent": spec["agent"], "run": spec["run"]}, {})
    if "policy" in spec:  # one seed of an imitate job; its task is in the job's results.json
        parent = path.parent / "results.json"
        task = _read_json(parent)["task"] if parent.is_file() else None
        configs = {"policy": spec["policy"], "train": spec.get("train", {})}
        return Run(path, "imitation", configs, {"task": task})
    summary = path / "summary.json"
    if "model" in spec and summary.is_file():  # world-model train --agent e2c
        run_config = _read_json(summary).get("run_config")
        if run_config is not None:
            return Run(path, "e2c", {"run": run_config, "model": spec["model"]}, {})
    return None


def _defaults(config: Any) -> dict[str, Any]:
    """The JSON of ``config``'s default values (a dataclass config with all-default fields), else
    {}: an option added to the library after a run was saved is what that run did at its default."""
    if not (dataclasses.is_dataclass(config) and not isinstance(config, type)):
        return {}
    try:
        return to_dict(type(config)())
    except (TypeError, ValueError):
        return {}


def _differences(recorded: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(recorded) | set(given))
    return [
        f"{key} = {given.get(key)!r} (the run has {recorded.get(key)!r})"
        for key in keys
        if recorded.get(key) != given.get(key)
    ]


def check_writable(path: str | os.PathLike, name: str = "out", *, folder: bool = True) -> None:
    """Refuse, writing nothing, a ``path`` that cannot be written as a folder (``folder``) or a
    file: one naming a file where a folder is meant (or the reverse), or one whose nearest
    existing parent folder this process may not write. Raises ValueError naming the fix."""
    target = Path(path)
    if folder and target.exists() and not target.is_dir():
        raise ValueError(f"{name} = {str(target)!r} is a file, not a folder: choose a folder")
    if not folder and target.is_dir():
        raise ValueError(f"{name} = {str(target)!r} is a folder: give a file name in it")
    existing = target if folder and target.is_dir() else target.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(
            f"{name} = {str(target)!r} is invalid: {str(existing)!r} is a file, not a folder"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"{name} = {str(target)!r} is invalid: cannot write {existing}: permission denied "
            "or read-only; choose a writable location"
        )


def check_run_folder(
    out: str | os.PathLike,
    resume: bool,
    *,
    kind: str | None = None,
    configs: Mapping[str, Any] | None = None,
    fixed: Iterable[str] = (),
    ignore: Mapping[str, Iterable[str]] | None = None,
    holds_run: bool = False,
) -> None:
    """Check, writing nothing, that a command may write its run into ``out``.

    A fresh run (``resume`` False) needs a folder without checkpoints (``holds_run``: the caller
    found other signs of a run there, e.g. stored episodes). A resume needs a checkpoint, and
    the run's ``kind`` and its configs named in ``fixed`` must equal ``configs``' (fields in
    ``ignore[name]`` may differ, e.g. the step budget). Raises ValueError naming the fix.
    """
    folder = Path(out)
    check_writable(folder)
    check_unlocked(folder)
    latest = find_latest(folder) if folder.is_dir() else None
    if not resume:
        if latest is not None or holds_run:
            found = f" (latest checkpoint {latest.name})" if latest is not None else ""
            raise ValueError(
                f"out = {str(folder)!r} already holds a run{found}: pass --resume to continue "
                "it, or choose another folder"
            )
        return
    if latest is None:
        raise ValueError(f"out = {str(folder)!r} holds no checkpoint to resume; drop --resume")
    fixed = tuple(fixed)
    if kind is None and not fixed:
        return
    try:
        run = read_run(folder)
    except ValueError:
        if fixed:
            raise
        return
    if kind is not None and run.kind != kind:
        raise ValueError(
            f"out = {str(folder)!r} holds a {run.kind} run, not a {kind} run: choose another "
            "folder, or drop --resume"
        )
    ignore = {name: set(fields) for name, fields in (ignore or {}).items()}
    problems = []
    for name in fixed:
        given = _as_json((configs or {})[name])
        recorded = {**_defaults((configs or {})[name]), **run.configs.get(name, {})}
        skip = ignore.get(name, set())
        given = {k: v for k, v in given.items() if k not in skip}
        recorded = {k: v for k, v in recorded.items() if k not in skip}
        problems += [f"{name}: {p}" for p in _differences(recorded, given)]
    if problems:
        raise ValueError(
            f"resume = True is invalid for {str(folder)!r}: its run was trained with other "
            f"options ({'; '.join(problems[:4])}{' …' if len(problems) > 4 else ''}); resume "
            "with the run's options, or drop --resume and choose another folder"
        )
