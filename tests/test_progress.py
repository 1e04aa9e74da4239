"""Progress bars: drawn only when asked and stderr is a terminal; ``--no-progress`` everywhere."""

import argparse
import io

import pytest

from latentvi.cli import build_parser, main
from latentvi.progress import progress_bar

TINY_VI = ["--steps", "20", "--num-points", "50", "--batch-size", "50", "--probe-draws", "5",
           "--refine-steps", "2", "--eval-every", "10"]  # fmt: skip


class Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("stream", "show", "drawn"),
    [(Terminal(), True, True), (io.StringIO(), True, False), (Terminal(), False, False)],
)
def test_progress_bar_draws_only_when_asked_on_a_terminal(stream, show, drawn):
    for _ in progress_bar(range(5), show=show, file=stream, desc="steps", mininterval=0):
        pass
    assert ("steps" in stream.getvalue()) is drawn


def _commands(parser: argparse.ArgumentParser, path=()):
    """Every leaf command of the CLI: (its words, its parser), including the parsers that a
    ``by_option`` value hands the command line to (world-model train --agent e2c)."""
    children = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not children:
        yield path, parser
        for value, other in (parser.by_option or (None, {}))[1].items():
            yield (*path, parser.by_option[0], value), other
        return
    for name, child in children[0].choices.items():
        yield from _commands(child, (*path, name))


def test_no_progress_parses_on_every_command():
    commands = list(_commands(build_parser()))
    names = {" ".join(words) for words, _ in commands}
    assert {"vi", "em", "eval", "sample", "plot", "imitate", "train vae", "train cvae"} <= names
    assert {"rl latent-q", "world-model train", "world-model train --agent e2c"} <= names
    for words, parser in commands:
        positionals = [a for a in parser._actions if not a.option_strings and a.required]
        line = [*words, *["RUN"] * len(positionals)]
        for flag, expected in (("--no-progress", False), ("--progress", True)):
            arguments = build_parser().parse_args([*line, flag])
            assert arguments.progress is expected, (words, flag)


@pytest.mark.parametrize(
    ("stream", "flags", "drawn"),
    [(Terminal, [], True), (io.StringIO, [], False), (Terminal, ["--no-progress"], False)],
)
def test_vi_command_draws_a_bar_only_on_a_terminal(tmp_path, monkeypatch, stream, flags, drawn):
    stderr = stream()
    monkeypatch.setattr("sys.stderr", stderr)
    assert main(["vi", *TINY_VI, "--out", str(tmp_path), "--json", *flags]) == 0
    assert ("vi:" in stderr.getvalue()) is drawn  # tqdm's "vi: 100%|...| 20/20" line
