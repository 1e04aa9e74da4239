"""How a command of the ``latentvi`` CLI is put together: its option groups from frozen configs
(:func:`latentvi.config.add_arguments`), ``--preset`` (:mod:`latentvi.presets`), ``--resume`` and
``--json``, and how its result is printed. JSON output never holds NaN or infinity (invalid JSON):
:func:`json_safe` writes ``null`` there and names each such field under ``"non_finite"``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from typing import Any

from latentvi.config import USAGE_ERROR, CommandParser, add_arguments
from latentvi.presets import DEFAULT_PRESET, preset_names, preset_notes
from latentvi.train.errors import RunFailedError, TrainingDivergedError, describe_os_error

__all__ = [
    "Groups",
    "add_progress_option",
    "command",
    "error_report",
    "json_safe",
    "print_result",
    "to_json",
    "with_options",
]

Groups = tuple[tuple[str, type], ...]  # option groups of a command: (group name, config type)


def command(subparsers, name: str, handler: Callable, groups: Groups = (), **keywords):
    """Sub-command ``name`` of ``subparsers``: ``help``, ``description`` and the other keywords
    of ``add_parser``, and those of :func:`with_options`."""
    options = {k: keywords.pop(k) for k in ("resume", "json_help", "presets") if k in keywords}
    return with_options(subparsers.add_parser(name, **keywords), handler, groups, **options)


def with_options(
    parser: CommandParser,
    handler: Callable,
    groups: Groups,
    resume: bool = False,
    json_help: str = "print the summary as one JSON object",
    presets: tuple[str, str] | None = None,
) -> CommandParser:
    """``parser`` with ``--preset`` (``presets``: the command in :mod:`latentvi.presets` and what
    its presets are), one option per field of ``groups``' configs (their help says what the
    presets set them to), then ``--resume`` (with ``resume``) and ``--json``; it runs
    ``handler(parsed arguments)``."""
    notes = {}
    if presets is not None:
        command, text = presets
        parser.add_argument(
            "--preset",
            choices=preset_names(command),
            default=DEFAULT_PRESET,
            help=f"{text} (default: {DEFAULT_PRESET}). A preset fills only the options not "
            "typed: a typed value always wins, even one equal to the default",
        )
        notes = preset_notes(command)
    for group_name, config_type in groups:
        add_arguments(parser.add_argument_group(group_name), config_type, notes)
    if resume:
        parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--json", action="store_true", help=json_help)
    parser.set_defaults(handler=handler)
    return parser


def add_progress_option(parser: CommandParser, what: str = "a progress bar") -> None:
    """``--progress/--no-progress`` on a command whose configs have no ``progress`` field, so
    that every command takes it (``what``: what it shows, or that the command draws none)."""
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"show {what} on stderr when it is a terminal (--no-progress: never)",
    )


def print_result(result: dict, as_json: bool) -> None:
    """Print a command's result: one JSON object (``as_json``; see :func:`json_safe`) or
    ``key: value`` lines, floats to 4 decimals."""
    if as_json:
        print(to_json(result))
        return
    for key, value in result.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for inner, item in value.items():
                print(f"  {inner}: {_format(item)}")
        else:
            print(f"{key}: {_format(value)}")


def _format(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def to_json(result: dict) -> str:
    """``result`` as indented JSON, with no NaN or infinity (:func:`json_safe`)."""
    return json.dumps(json_safe(result), indent=2, allow_nan=False)


def json_safe(result: dict) -> dict:
    """``result`` with every NaN or infinite float (at any depth) replaced by ``None``, and a
    ``"non_finite"`` entry naming each replaced field (``"a.b"``, ``"c[2]"``) with what it was."""
    replaced: dict[str, str] = {}

    def clean(value: Any, where: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            replaced[where] = repr(value)
            return None
        if isinstance(value, dict):
            return {k: clean(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return value

    cleaned = clean(result, "")
    if replaced:
        cleaned["non_finite"] = replaced
    return cleaned


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _out_of_memory(error: BaseException) -> bool:
    """torch's allocators: ``OutOfMemoryError`` (CUDA) or the CPU allocator's message."""
    return "OutOfMemoryError" in type(error).__name__ or "can't allocate memory" in str(error)


def error_report(error: BaseException) -> tuple[str | None, int]:
    """``(one line, exit code)`` for an error a command ended with, ``(None, 1)`` for one that
    is a bug (its traceback is shown). Bad input and filesystem or memory errors before a run
    starts: exit code 2 (nothing was written); during a run (``RunFailedError``, divergence,
    torch out of memory): 1."""
    if isinstance(error, ValueError):
        return f"error: {_one_line(error)}", USAGE_ERROR
    if isinstance(error, RunFailedError):
        return f"error: {error}", 1
    if isinstance(error, (OSError, MemoryError)):
        return f"error: {describe_os_error(error)}", USAGE_ERROR
    if isinstance(error, TrainingDivergedError):
        return _one_line(error), 1
    if _out_of_memory(error):
        return f"error: {describe_os_error(MemoryError())}", 1
    return None, 1
