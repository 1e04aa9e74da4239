"""The ``latentvi`` command line: a thin layer over the Python API.

Every sub-command builds a frozen config from its options (help text from the config's fields),
calls one library function and prints a table, or one JSON object with ``--json``. Bad input is one
line on stderr naming the problem, and exit code 2, with no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import typing
from collections.abc import Callable, Sequence

from latentvi.config import add_arguments, from_arguments

__all__ = ["main"]

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error format (one line, exit code 2)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _add_vi(subparsers) -> None:
    from latentvi.experiments.vi import VIConfig

    parser = subparsers.add_parser(
        "vi",
        help="fit a linear-Gaussian data set by per-datapoint and amortized VI with both gradient "
        "estimators; compare with the exact log p(x)",
        description="Fit probabilistic PCA by per-datapoint and amortized variational inference "
        "with the reparameterization and score-function estimators, and compare every bound with "
        "the exact log-likelihood. All values are nats per example.",
    )
    add_arguments(parser, VIConfig)
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.set_defaults(handler=_run_vi, config_type=VIConfig)


def _run_vi(arguments: argparse.Namespace) -> None:
    from latentvi.experiments.vi import format_vi_report, run_vi

    config = from_arguments(arguments.config_type, arguments)
    results = run_vi(config, progress=not arguments.json)
    if arguments.json:
        print(json.dumps(results, indent=2))
    else:
        print(format_vi_report(results))


COMMANDS: list[Callable] = [_add_vi]


def build_parser() -> argparse.ArgumentParser:
    """The full ``latentvi`` parser with every sub-command."""
    parser = _Parser(
        prog="latentvi",
        description="Latent variable models and variational inference on PyTorch.",
    )
    subparsers = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``latentvi`` script; returns the exit code."""
    parser = build_parser()
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        arguments.handler(arguments)
    except (ValueError, FileNotFoundError) as error:
        print(f"latentvi {arguments.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("latentvi: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
