"""Durable files without pickle: safetensors for tensors, JSON for everything else.

- :func:`write_tensors` / :func:`read_tensors`: a ``name -> tensor`` dict as a safetensors file.
  Tensors that are views of one another (tied weights) are stored once and listed as aliases;
  non-contiguous tensors and tensors that share memory are copied first, as safetensors requires.
- :func:`encode_tree` / :func:`decode_tree`: a nested structure of dicts, lists, tuples, numbers,
  strings, None and tensors as JSON plus a ``name -> tensor`` dict (tuples and non-string dict
  keys are tagged so they come back as they were).
- Every write is flushed and fsynced; :func:`replace_text` swaps a small file in atomically.

Readers raise :class:`CheckpointError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import safetensors.torch
import torch

from latentvi.train.errors import CheckpointError

__all__ = [
    "decode_tree",
    "encode_tree",
    "file_digest",
    "fsync_dir",
    "json_depth",
    "parse_json",
    "read_json",
    "read_tensors",
    "replace_file",
    "replace_text",
    "umask_mode",
    "write_bytes",
    "write_json",
    "write_tensors",
]

_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"
_TAGS = (_TENSOR, _TUPLE, _ITEMS)
_ADVICE = "delete it or resume from an earlier checkpoint"


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (new/renamed files) to disk; a no-op where unsupported."""
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def _named(error: OSError, path: Path) -> OSError:
    """`error` with `path` as its file name (a failed ``write`` or ``fsync`` carries none)."""
    if error.filename is not None:
        return error
    return OSError(error.errno, error.strerror or str(error), str(path))


def umask_mode(directory: bool = False) -> int:
    """The mode ``open``/``mkdir`` would give a new file (0666) or folder (0777) under the
    process's umask; files made by ``mkstemp``/``mkdtemp`` (0600/0700) are set to it, so run
    files follow the umask like any other file."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path`, flushed and fsynced."""
    try:
        with open(path, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        raise _named(error, path) from error


def write_json(path: Path, value: Any) -> None:
    """Write `value` as indented JSON (non-finite floats as NaN/Infinity), fsynced."""
    write_bytes(path, (json.dumps(value, indent=2) + "\n").encode())


def replace_file(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Atomically make what ``write(stream)`` writes the content of `path`: a temp file in the
    same folder, fsync, ``os.replace``, fsync the folder. Readers see the old or the new content,
    never a mix; on an error the temp file is removed and `path` is left as it was."""
    try:
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise _named(error, path) from error
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp, umask_mode())
        os.replace(temp, path)
    except OSError as error:
        Path(temp).unlink(missing_ok=True)
        raise _named(error, path) from error
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def replace_text(path: Path, text: str) -> None:
    """Atomically make `text` the content of `path` (see :func:`replace_file`)."""
    replace_file(path, lambda stream: stream.write(text.encode()))


def file_digest(path: Path) -> dict[str, Any]:
    """``{"bytes": size, "sha256": hex}`` of a file, for integrity checks on load."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def write_tensors(path: Path, named: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Write `named` as a safetensors file; returns the aliases ``{name: stored_name}`` of
    entries that are the same view of memory as an earlier entry (stored once)."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, value in named.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"{path.name}: entry {name!r} is a {type(value).__name__}, not a tensor; "
                "safetensors stores tensors only"
            )
        value = value.detach()
        if value.numel() > 0:
            identity = (
                value.device,
                value.untyped_storage().data_ptr(),
                value.storage_offset(),
                tuple(value.shape),
                value.stride(),
                value.dtype,
            )
            if identity in seen:
                aliases[name] = seen[identity]
                continue
            seen[identity] = name
        # A private contiguous CPU copy: no shared storage, no odd strides.
        tensors[name] = value.to("cpu", copy=True).contiguous()
    write_bytes(path, safetensors.torch.save(tensors))
    return aliases


def read_tensors(
    path: Path, device: str | torch.device = "cpu", aliases: Mapping[str, str] | None = None
) -> dict[str, torch.Tensor]:
    """Read a file written by :func:`write_tensors` (aliases re-attached to their tensor)."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing; {_ADVICE}")
    try:
        tensors = safetensors.torch.load_file(path, device=str(device))
    except Exception as error:  # SafetensorError, OSError: the file cannot be parsed
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt: {error}; {_ADVICE}"
        ) from error
    for name, target in (aliases or {}).items():
        if target not in tensors:
            raise CheckpointError(
                f"checkpoint {path} is corrupt: alias {name!r} points to missing {target!r}; "
                f"{_ADVICE}"
            )
        tensors[name] = tensors[target]
    return tensors


MAX_JSON_DEPTH = 64  # what latentvi writes nests < 15 levels (optimizer state, RNG states)
MAX_JSON_BYTES = 1 << 30


def json_depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (0 for a number or string), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def parse_json(text: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON text; ValueError saying why (the caller names the file) when it is not JSON, nests
    deeper than ``max_depth`` (a 200,000-level file is refused, not a RecursionError) or is
    larger than 1 GiB."""
    if len(text) > MAX_JSON_BYTES:
        raise ValueError(f"{len(text)} characters long: not a file latentvi wrote")
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError(f"nests too deeply (over {max_depth} levels)") from None
    except ValueError as error:
        raise ValueError(f"not valid JSON: {error}") from None
    if json_depth(value) > max_depth:
        raise ValueError(f"nests too deeply (over {max_depth} levels)")
    return value


def read_json(path: Path) -> Any:
    """Parse a JSON file, raising CheckpointError naming the file when it is missing or broken."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing; {_ADVICE}")
    try:
        return parse_json(path.read_text())
    except (ValueError, UnicodeDecodeError, OSError) as error:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt: {error}; {_ADVICE}"
        ) from error


def encode_tree(value: Any, tensors: dict[str, torch.Tensor], name: str) -> Any:
    """JSON-ready form of `value`; tensors go into `tensors` under dotted names from `name`."""
    if isinstance(value, torch.Tensor):
        if name in tensors:  # two paths spelled alike ("a.b" key vs a -> b): keep both
            name = f"{name}#{len(tensors)}"
        tensors[name] = value
        return {_TENSOR: name}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # numpy scalar
        return value.item()
    if isinstance(value, tuple):
        return {_TUPLE: [encode_tree(v, tensors, f"{name}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode_tree(v, tensors, f"{name}.{i}") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        plain = all(isinstance(key, str) and key not in _TAGS for key in value)
        if plain:
            return {key: encode_tree(v, tensors, f"{name}.{key}") for key, v in value.items()}
        return {
            _ITEMS: [
                [
                    encode_tree(key, tensors, f"{name}.key{i}"),
                    encode_tree(v, tensors, f"{name}.{i}"),
                ]
                for i, (key, v) in enumerate(value.items())
            ]
        }
    raise TypeError(
        f"{name}: a {type(value).__name__} cannot be stored in a checkpoint (JSON + safetensors "
        "only); convert it to tensors, numbers, strings, lists, tuples or dicts"
    )


def decode_tree(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`encode_tree`; raises KeyError for a tensor name not in `tensors`."""
    if isinstance(value, list):
        return [decode_tree(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1 and _TENSOR in value:
        return tensors[value[_TENSOR]]
    if len(value) == 1 and _TUPLE in value:
        return tuple(decode_tree(v, tensors) for v in value[_TUPLE])
    if len(value) == 1 and _ITEMS in value:
        return {
            _hashable(decode_tree(k, tensors)): decode_tree(v, tensors) for k, v in value[_ITEMS]
        }
    return {key: decode_tree(v, tensors) for key, v in value.items()}


def _hashable(key: Any) -> Any:
    return tuple(_hashable(part) for part in key) if isinstance(key, list) else key
