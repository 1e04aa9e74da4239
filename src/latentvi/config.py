"""Small frozen dataclass configs behind the command line.

A config is a frozen dataclass whose fields are declared with :func:`option`, which records the help
text; :func:`add_arguments` turns the fields into ``--kebab-case`` command-line options and
:func:`from_arguments` builds the config back, so the dataclass's ``__post_init__`` validation runs
exactly once, for the Python API and the CLI alike. Validation raises ``ValueError`` naming the
field, the value and the fix (see :func:`require`).

The options have no argparse default (``argparse.SUPPRESS``): the parsed namespace holds exactly
the options that were typed (and a parser's ``set_defaults``), so :func:`argument_values` tells a
typed value from a default even when the two are equal, and a preset (:mod:`latentvi.presets`)
fills only what was not typed. The dataclass default stays the one source of each default.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any, TypeVar

__all__ = [
    "USAGE_ERROR",
    "CommandParser",
    "add_arguments",
    "argument_values",
    "check_positive_int",
    "from_arguments",
    "from_dict",
    "option",
    "require",
    "to_dict",
    "typed_values",
]

T = TypeVar("T")

USAGE_ERROR = 2  # the exit code of a command line with a bad argument


def option(default: Any, help: str, *, choices: tuple | None = None) -> Any:
    """A dataclass field with a default and the ``--help`` text for its command-line option."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


def require(condition: bool, field: str, value: Any, fix: str) -> None:
    """Raise ``ValueError("<field> = <value> is invalid: <fix>")`` unless ``condition`` holds."""
    if not condition:
        raise ValueError(f"{field} = {value!r} is invalid: {fix}")


def require_int(value: Any, field: str, minimum: int, fix: str) -> None:
    """:func:`require` that ``value`` is an integer (not a bool) >= ``minimum``."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    require(ok, field, value, fix)


def require_layer_sizes(field: str, sizes: Any, example: str) -> None:
    """:func:`require` that ``sizes`` is one or more positive layer sizes (e.g. ``"200,200"``)."""
    require(
        len(sizes) >= 1 and all(int(h) >= 1 for h in sizes),
        field,
        sizes,
        f"give one or more positive layer sizes, e.g. {example}",
    )


def check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` if it is an integer >= 1 (not a bool), else raise ``ValueError`` naming
    ``name``: the one check behind every size, count and sample number in latentvi."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(the scalar type, whether None is allowed) for annotations like ``int | None``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], True
    return annotation, False


def add_arguments(
    parser: argparse.ArgumentParser, config_type: type, notes: dict[str, str] | None = None
) -> None:
    """Add one ``--option`` per field of the dataclass ``config_type`` (help: :func:`option`).

    An option left out of the command line leaves no attribute on the namespace (the dataclass
    default applies in :func:`from_arguments`); ``--help`` shows the dataclass default, and
    ``notes[field]`` after it (e.g. the presets' values of that field)."""
    hints = typing.get_type_hints(config_type)
    notes = notes or {}
    for field in dataclasses.fields(config_type):
        if not field.init:
            continue
        kind, optional = _base_type(hints[field.name])
        help_text = field.metadata.get("help", "").replace("%", "%%")  # argparse formats help
        shown = field.default
        if typing.get_origin(kind) is tuple:
            help_text, shown = f"{help_text}, comma-separated", ",".join(map(str, field.default))
        # An option without a default says what leaving it out means in its own help text.
        extra = [f"default: {shown}"] if field.default is not None else []
        extra += [notes[field.name].replace("%", "%%")] if field.name in notes else []
        if extra:
            help_text = f"{help_text} ({'; '.join(extra)})"
        arguments: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text}
        if typing.get_origin(kind) is tuple:
            item = typing.get_args(kind)[0]
            arguments |= {"type": _comma_separated(item), "metavar": f"{item.__name__.upper()},..."}
        elif kind is bool:
            arguments |= {"action": argparse.BooleanOptionalAction}
        else:
            choices = field.metadata.get("choices")
            arguments |= {
                "type": _none_or(kind) if optional else kind,
                "choices": choices,
                "metavar": kind.__name__.upper() if choices is None else None,
            }
        parser.add_argument(_option_name(field.name), **arguments)


def _comma_separated(item: type):
    def parse(text: str) -> tuple:
        try:
            return tuple(item(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {item.__name__} values like 200,200; got {text!r}"
            ) from None

    parse.__name__ = f"{item.__name__} list"
    return parse


def _none_or(kind: type):
    def parse(text: str):
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__
    return parse


def from_arguments(config_type: type[T], arguments: argparse.Namespace) -> T:
    """Build ``config_type`` from parsed arguments (its ``__post_init__`` validates)."""
    return config_type(**argument_values(config_type, arguments))


def argument_values(config_type: type, arguments: argparse.Namespace) -> dict[str, Any]:
    """The parsed values of ``config_type``'s options, by field name: the options typed on the
    command line (and values of the parser's ``set_defaults``); fields left out are left out."""
    return {
        f.name: getattr(arguments, f.name)
        for f in dataclasses.fields(config_type)
        if f.init and hasattr(arguments, f.name)
    }


_JSON_TYPES = {int: (int,), float: (int, float), bool: (bool,), str: (str,)}


def _json_value_fits(value: Any, annotation: Any) -> bool:
    """Whether a JSON value can be a field of type ``annotation`` (int, float, bool, str,
    tuples of those, ``X | None``); other annotations are not checked here."""
    if annotation in _JSON_TYPES:
        if isinstance(value, bool) and annotation is not bool:
            return False
        return isinstance(value, _JSON_TYPES[annotation])
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_json_value_fits(value, a) for a in arguments)
    if annotation is type(None):
        return value is None
    if origin is tuple and arguments:
        if not isinstance(value, (list, tuple)):
            return False
        element = arguments[0]
        return all(_json_value_fits(v, element) for v in value)
    return True


def from_dict(config_type: type[T], values: dict[str, Any]) -> T:
    """``config_type`` from a :func:`to_dict` dict read back from JSON: lists become tuples
    (JSON has no tuples) and fields the dict lacks keep their defaults. An unknown key, or a
    value of the wrong type, is a ``TypeError`` naming it; the values are then validated by
    ``config_type``'s ``__post_init__`` (ValueError)."""
    if not isinstance(values, dict):
        raise TypeError(f"{config_type.__name__}: expected a JSON object, got {values!r:.60}")
    try:
        hints = typing.get_type_hints(config_type)
    except (NameError, TypeError):  # an annotation that cannot be resolved: checked by the type
        hints = {}
    names = {f.name for f in dataclasses.fields(config_type)}
    for key, value in values.items():
        if key not in names:
            raise TypeError(f"{config_type.__name__} has no field {key!r:.60}")
        if not _json_value_fits(value, hints.get(key)):
            raise TypeError(f"{config_type.__name__}.{key} = {value!r:.60} has the wrong type")
    return config_type(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (possibly nested) dataclass config."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


class CommandParser(argparse.ArgumentParser):
    """argparse with the project's error format (one line, exit code :data:`USAGE_ERROR`).

    ``by_option = (option, {value: parser})`` hands a command line on which ``option`` is given
    that value to another parser (``world-model train --agent e2c``: E2C's own options);
    ``old_prefix = "e2c"`` also accepts ``--e2c-name`` for this parser's ``--name``."""

    def __init__(self, *args, by_option=None, old_prefix: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.by_option = by_option
        self.old_prefix = old_prefix

    def error(self, message: str) -> typing.NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message}\n")

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        if self.by_option is not None:
            option, parsers = self.by_option
            chosen = parsers.get(_last_value(args, option))
            if chosen is not None:
                return chosen.parse_known_args(args, namespace)
        if self.old_prefix is not None:
            args = [self._without_prefix(arg) for arg in args]
        return super().parse_known_args(args, namespace)

    def _without_prefix(self, arg: str) -> str:
        """``--PREFIX-name[=value]`` -> ``--name[=value]`` (and ``--no-PREFIX-name`` ->
        ``--no-name``) where this parser has that option; other arguments as they are."""
        name, equals, value = arg.partition("=")
        for old, new in ((f"--{self.old_prefix}-", "--"), (f"--no-{self.old_prefix}-", "--no-")):
            renamed = new + name[len(old) :]
            if name.startswith(old) and renamed in self._option_string_actions:
                return renamed + equals + value
        return arg


def _last_value(args: list[str], option: str) -> str | None:
    """The value of the last ``option VALUE`` or ``option=VALUE`` in ``args``, ``option`` also
    abbreviated as argparse allows (``--ag e2c`` for ``--agent e2c``)."""
    value = None
    for i, arg in enumerate(args):
        name, equals, given = arg.partition("=")
        if not (name.startswith("--") and len(name) > 2 and option.startswith(name)):
            continue
        if equals:
            value = given
        elif i + 1 < len(args):
            value = args[i + 1]
    return value


def typed_values(arguments: argparse.Namespace, config_types: Sequence[type]) -> dict:
    """:func:`argument_values` over ``config_types``: the options typed on the command line, by
    field name (the configs' field names must not clash)."""
    return {k: v for t in config_types for k, v in argument_values(t, arguments).items()}
