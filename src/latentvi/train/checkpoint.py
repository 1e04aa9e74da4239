"""Checkpoints as safetensors + JSON, written atomically, loaded without pickle.

Layout of a run folder's checkpoints::

    run_dir/checkpoints/
      latest                  text: the name of the newest complete checkpoint, e.g. "step-000300"
      best                    text: the checkpoint with the lowest eval loss (written by fit)
      step-000300/
        model.safetensors     model.state_dict(); tied tensors stored once (aliases in state.json)
        optimizer.safetensors every tensor of optimizer.state_dict(), under dotted names
        optimizer.json        the rest of optimizer.state_dict() (param_groups, python numbers),
                              with {"__tensor__": name} where a tensor was
        rng.safetensors       torch CPU (and CUDA) generator states, one set per rank
        extra.safetensors     tensors inside extra_state (only when there are any)
        config.json           the run's resolved config
        state.json            written last: step, extra_state (epoch, batch in epoch, metrics),
                              python/numpy RNG states, and size + sha256 of every other file

Atomicity: everything is written (and fsynced) into ``checkpoints/.tmp-step-000300-XXXX/``, which
is then renamed to ``step-000300``; only after that is ``latest`` replaced (temp file +
``os.replace``). A crash leaves either the old checkpoint and pointer or the new ones; leftover
``.tmp-*`` folders are never read and are removed by the next save. One process writes to a run
folder at a time.

Loading reads only ``safetensors.torch.load_file`` and ``json``; anything missing, truncated,
corrupt (size or sha256 differs from state.json) or not matching the model raises
:class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import safetensors
import torch

from latentvi.memory import meta_build, network_bytes, require_memory
from latentvi.train.errors import CheckpointError
from latentvi.train.rng import RNGState, capture_rng_state, restore_rng_state
from latentvi.train.storage import (
    decode_tree,
    encode_tree,
    file_digest,
    fsync_dir,
    read_json,
    read_tensors,
    replace_text,
    umask_mode,
    write_json,
    write_tensors,
)

__all__ = [
    "CheckpointError",
    "build_for_checkpoint",
    "checkpoint_name",
    "find_best",
    "find_latest",
    "list_checkpoints",
    "load_checkpoint",
    "mark_best",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LATEST = "latest"
BEST = "best"
FORMAT = "latentvi-checkpoint-1"
_STEP_FOLDER = re.compile(r"^step-(\d+)$")
_RESERVED = ("step", "path")


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint after `step`: ``step-000123``."""
    return f"step-{step:06d}"


def _checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    path = Path(run_dir)
    return path if path.name == CHECKPOINTS else path / CHECKPOINTS


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    extra_state: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    *,
    keep: int | None = None,
    rng_states: list[RNGState] | None = None,
) -> Path:
    """Write the checkpoint after `step` to ``run_dir/checkpoints/step-{step:06d}`` atomically,
    point ``latest`` at it, and (with `keep`) prune to the `keep` newest checkpoints (the ones
    ``latest`` and ``best`` name are never pruned). Returns the checkpoint folder.

    Args:
        extra_state: JSON-ready values and tensors to keep (e.g. epoch, batch in epoch, metrics);
            string keys other than "step" and "path". Returned by :func:`load_checkpoint`.
        config: the run's resolved config, saved as config.json.
        rng_states: global random states to store, one per rank (default: this process's).
    """
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"step = {step!r} is invalid: use an integer >= 0")
    extra_state = dict(extra_state or {})
    for key in extra_state:
        if not isinstance(key, str) or key in _RESERVED:
            raise ValueError(
                f"extra_state key {key!r} is invalid: use string keys other than {_RESERVED}"
            )
    folder = _checkpoints_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / checkpoint_name(step)
    temp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=folder))
    try:
        os.chmod(temp, umask_mode(directory=True))  # mkdtemp makes it 0700
        _write_contents(temp, step, model, optimizer, extra_state, config, rng_states)
        fsync_dir(temp)
        _publish(temp, final)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    replace_text(folder / LATEST, final.name + "\n")
    if keep is not None:
        prune_checkpoints(folder, keep)
    logger.info("saved checkpoint %s", final)
    return final


def _write_contents(
    folder: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    extra_state: dict[str, Any],
    config: Mapping[str, Any] | None,
    rng_states: list[RNGState] | None,
) -> None:
    state: dict[str, Any] = {"format": FORMAT, "step": step, "time": time.time()}
    state["model_aliases"] = write_tensors(folder / "model.safetensors", model.state_dict())
    if optimizer is not None:
        tensors: dict[str, torch.Tensor] = {}
        tree = encode_tree(optimizer.state_dict(), tensors, "optimizer")
        aliases = write_tensors(folder / "optimizer.safetensors", tensors)
        write_json(folder / "optimizer.json", {"state_dict": tree, "aliases": aliases})
    rng_states = rng_states if rng_states is not None else [capture_rng_state()]
    rng_tensors: dict[str, torch.Tensor] = {}
    for rank, rng in enumerate(rng_states):
        rng_tensors.update(rng.tensors(f"rank{rank}."))
    write_tensors(folder / "rng.safetensors", rng_tensors)
    state["rng"] = [rng.json() for rng in rng_states]
    extra_tensors: dict[str, torch.Tensor] = {}
    state["extra"] = encode_tree(extra_state, extra_tensors, "extra")
    if extra_tensors:
        state["extra_aliases"] = write_tensors(folder / "extra.safetensors", extra_tensors)
    write_json(folder / "config.json", dict(config or {}))
    state["files"] = {path.name: file_digest(path) for path in sorted(folder.iterdir())}
    write_json(folder / "state.json", state)  # last: its presence marks a complete folder


def _publish(temp: Path, final: Path) -> None:
    """Rename the finished temp folder to `final`, replacing an older folder of that name."""
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    os.replace(temp, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders (``step-*`` with a state.json), oldest step first."""
    folder = _checkpoints_dir(run_dir)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _STEP_FOLDER.match(path.name)
        if match and (path / "state.json").is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def _pointer(folder: Path, name: str) -> Path | None:
    try:
        target = (folder / name).read_text().strip()
    except OSError:
        return None
    path = folder / target
    if _STEP_FOLDER.match(target) and (path / "state.json").is_file():
        return path
    return None


def find_latest(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run (its folder or its ``checkpoints`` folder): the
    one ``latest`` names, or, if that pointer is missing or stale, the highest complete step.
    Half-written ``.tmp-*`` folders are never returned. None when there is none."""
    folder = _checkpoints_dir(run_dir)
    latest = _pointer(folder, LATEST)
    if latest is not None:
        return latest
    complete = list_checkpoints(folder)
    return complete[-1] if complete else None


def find_best(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint ``best`` names (lowest eval loss, see :func:`mark_best`), or None."""
    return _pointer(_checkpoints_dir(run_dir), BEST)


def mark_best(checkpoint: str | os.PathLike) -> None:
    """Point the run's ``best`` file at `checkpoint` (protecting it from pruning)."""
    path = Path(checkpoint)
    replace_text(path.parent / BEST, path.name + "\n")


def prune_checkpoints(
    run_dir: str | os.PathLike, keep: int, *, protect: Iterable[str | os.PathLike] = ()
) -> list[Path]:
    """Delete all but the `keep` newest checkpoints, sparing those ``latest``/``best`` name and
    `protect`; also remove leftovers of interrupted saves. Returns the deleted folders."""
    if keep < 1:
        raise ValueError(f"keep = {keep} is invalid: keep at least 1 checkpoint")
    folder = _checkpoints_dir(run_dir)
    spared = {Path(path).name for path in protect}
    spared.update(path.name for path in (_pointer(folder, LATEST), _pointer(folder, BEST)) if path)
    complete = list_checkpoints(folder)
    deleted = [path for path in complete[:-keep] if path.name not in spared]
    for path in deleted:
        shutil.rmtree(path, ignore_errors=True)
    for path in folder.iterdir():
        if path.name.startswith((".tmp-step-", ".old-step-")) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
    return deleted


def remove_checkpoints_after(run_dir: str | os.PathLike, step: int) -> list[Path]:
    """Delete complete checkpoints of steps after `step` (a timeline abandoned by a resume)."""
    removed = []
    for path in list_checkpoints(run_dir):
        if int(_STEP_FOLDER.match(path.name).group(1)) > step:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _resolve(path_or_run_dir: str | os.PathLike) -> Path:
    path = Path(path_or_run_dir)
    if (path / "state.json").is_file() or _STEP_FOLDER.match(path.name):
        if not path.is_dir():
            raise CheckpointError(f"checkpoint folder {path} does not exist; check the path")
        return path
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass a run folder or a checkpoint folder")
    latest = find_latest(path)
    if latest is None:
        raise CheckpointError(
            f"no complete checkpoint in {_checkpoints_dir(path)}; train with TrainConfig(out=...) "
            "first, or pass the folder of one checkpoint (…/checkpoints/step-000123)"
        )
    return latest


def _verify_files(folder: Path, state: Mapping[str, Any]) -> None:
    for name, expected in state["files"].items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {path} is missing; resume from another one")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise CheckpointError(
                f"checkpoint {path} is truncated or corrupt: {size} bytes, expected "
                f"{expected['bytes']}; delete it or resume from an earlier checkpoint"
            )
        if file_digest(path)["sha256"] != expected["sha256"]:
            raise CheckpointError(
                f"checkpoint {path} is corrupt: its sha256 differs from the one recorded in "
                "state.json; delete it or resume from an earlier checkpoint"
            )


def _check_model(model: torch.nn.Module, loaded: Mapping[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(loaded))
    unexpected = sorted(set(loaded) - set(expected))
    shapes = [
        f"{name}: checkpoint {tuple(loaded[name].shape)} vs model {tuple(expected[name].shape)}"
        for name in expected
        if name in loaded and loaded[name].shape != expected[name].shape
    ]
    dtypes = [
        f"{name}: checkpoint {loaded[name].dtype} vs model {expected[name].dtype}"
        for name in expected
        if name in loaded and loaded[name].dtype != expected[name].dtype
    ]
    parameters = {name for name, _ in model.named_parameters()}
    non_finite = [
        name
        for name in sorted(parameters & set(loaded))
        if loaded[name].is_floating_point()
        and not loaded[name].is_meta  # declared only (build_for_checkpoint)
        and not bool(torch.isfinite(loaded[name]).all())
    ]
    problems = []
    if dtypes:
        problems.append(f"dtype mismatch {'; '.join(dtypes[:5])}")
    if non_finite:
        problems.append(
            f"non-finite weights in {non_finite[:5]}{' …' if len(non_finite) > 5 else ''}"
        )
    if missing:
        problems.append(f"missing keys {missing[:5]}{' …' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:5]}{' …' if len(unexpected) > 5 else ''}")
    if shapes:
        problems.append(f"shape mismatch {'; '.join(shapes[:5])}")
    if problems:
        raise CheckpointError(
            f"checkpoint {path} does not match the model: {', '.join(problems)}; build the model "
            f"with the configuration in {path.parent / 'config.json'}"
        )


def _check_optimizer(optimizer: torch.optim.Optimizer, loaded: Mapping, path: Path) -> None:
    groups = loaded.get("param_groups") if isinstance(loaded, Mapping) else None
    if not isinstance(groups, list) or not isinstance(loaded.get("state"), Mapping):
        raise CheckpointError(f"checkpoint {path} is corrupt: no 'state'/'param_groups' entries")
    ours = [len(group["params"]) for group in optimizer.param_groups]
    theirs = [len(group.get("params", [])) for group in groups]
    if ours != theirs:
        raise CheckpointError(
            f"checkpoint {path} does not match the optimizer: parameter groups of sizes {theirs} "
            f"vs {ours}; build the optimizer the same way as in the saved run"
        )


_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
           "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
           "BOOL": "bool"}  # fmt: skip


def _declared(folder: Path) -> dict[str, torch.Tensor]:
    """The model tensors a checkpoint declares, as meta tensors: its header only is read."""
    path, aliases = folder / "model.safetensors", read_json(folder / "state.json")
    try:
        with safetensors.safe_open(path, framework="pt") as handle:
            found = {}
            for name in handle.keys():  # noqa: SIM118 (a handle, not a dict)
                part = handle.get_slice(name)
                dtype = getattr(torch, _DTYPES[part.get_dtype()])
                found[name] = torch.empty(part.get_shape(), dtype=dtype, device="meta")
        for name, target in dict(aliases.get("model_aliases") or {}).items():
            found[name] = found[target]
    except Exception as error:  # SafetensorError, a bad dtype or alias, sizes that overflow
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt: {error}") from None
    return found


def build_for_checkpoint(build, path_or_run_dir: str | os.PathLike, declared_in: Path):
    """``build()``, once it is known without allocating anything that the network it makes
    (from the configuration in ``declared_in``, a run's ``run.json``) fits in the memory
    available and has the names, shapes and dtypes the checkpoint's ``model.safetensors``
    declares; otherwise one line (ValueError) naming the file."""
    fix = "the file is damaged or was edited: restore it or retrain"
    try:
        probe = meta_build(build)
    except OverflowError as error:
        message = f"{declared_in} declares a network too large to build ({error}); {fix}"
        raise ValueError(message) from None
    require_memory(network_bytes(probe, training=False), "the network it declares",
                   (str(declared_in),), fix)  # fmt: skip
    folder = _resolve(path_or_run_dir)
    _check_model(probe, _declared(folder), folder / "model.safetensors")
    return build()


def load_checkpoint(
    path_or_run_dir: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    map_location: str | torch.device = "cpu",
    *,
    restore_rng: bool = True,
    rank: int = 0,
) -> dict[str, Any]:
    """Restore a checkpoint into `model` (and `optimizer`) and, with `restore_rng`, the global
    random state saved for `rank`. Everything is checked before anything is changed.

    Args:
        path_or_run_dir: a checkpoint folder, or a run folder (its latest checkpoint is used).
        map_location: device the tensors are read to before being copied into the model.

    Returns:
        ``{"step": int, "path": str, "rng_restored": bool, **extra_state}``.
    """
    folder = _resolve(path_or_run_dir)
    state_path = folder / "state.json"
    state = read_json(state_path)
    try:
        if state.get("format") != FORMAT:
            raise KeyError(f"format {state.get('format')!r}, expected {FORMAT!r}")
        step = int(state["step"])
        files, rng_entries = state["files"], state["rng"]
        if not isinstance(files, Mapping) or not isinstance(rng_entries, list):
            raise KeyError("'files' or 'rng'")
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise CheckpointError(
            f"checkpoint {state_path} is corrupt (bad or missing entry {error}); delete it or "
            "resume from an earlier checkpoint"
        ) from error
    _verify_files(folder, state)

    model_path = folder / "model.safetensors"
    model_state = read_tensors(model_path, map_location, state.get("model_aliases"))
    _check_model(model, model_state, model_path)

    optimizer_state = None
    if optimizer is not None:
        layout_path = folder / "optimizer.json"
        if not layout_path.is_file():
            raise CheckpointError(f"checkpoint {folder} holds no optimizer state ({layout_path})")
        layout = read_json(layout_path)
        try:
            tensors = read_tensors(
                folder / "optimizer.safetensors", map_location, layout["aliases"]
            )
            optimizer_state = decode_tree(layout["state_dict"], tensors)
        except (KeyError, TypeError) as error:
            raise CheckpointError(
                f"checkpoint {layout_path} is corrupt (missing entry {error}); delete it or "
                "resume from an earlier checkpoint"
            ) from error
        _check_optimizer(optimizer, optimizer_state, layout_path)

    rng = None
    if restore_rng and rank < len(rng_entries):
        rng_path = folder / "rng.safetensors"
        try:
            rng = RNGState.from_parts(rng_entries[rank], read_tensors(rng_path), f"rank{rank}.")
        except (KeyError, TypeError) as error:
            raise CheckpointError(f"checkpoint {rng_path} is corrupt (missing {error})") from error
    elif restore_rng:
        logger.warning(
            "checkpoint %s has random states for %d rank(s), none for rank %d; not restored",
            folder,
            len(rng_entries),
            rank,
        )

    try:
        extra_tensors = {}
        if "extra_aliases" in state:
            extra_tensors = read_tensors(
                folder / "extra.safetensors", map_location, state["extra_aliases"]
            )
        extra = decode_tree(state.get("extra", {}), extra_tensors)
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"checkpoint {state_path} is corrupt (missing {error})") from error

    model.load_state_dict(model_state, strict=True)
    if optimizer is not None:
        try:
            optimizer.load_state_dict(optimizer_state)
        except (ValueError, KeyError, TypeError) as error:
            raise CheckpointError(
                f"checkpoint {folder / 'optimizer.json'} does not match the optimizer: {error}"
            ) from error
    if rng is not None:
        restore_rng_state(rng)
    return {**extra, "step": step, "path": str(folder), "rng_restored": rng is not None}
