"""The one way latentvi draws a progress bar.

``show=True`` means "show it when someone is watching": the bar is drawn only when its stream
(stderr) is a terminal, so logs, pipes, CI and ``--json`` output never fill with bar frames
(tqdm's ``disable=None``). ``show=False`` (``--no-progress`` on every command) never draws it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

__all__ = ["progress_bar"]


def progress_bar(iterable: Iterable | None = None, *, show: bool = True, **keywords: Any) -> tqdm:
    """A tqdm bar over ``iterable`` (or a manual one: ``total=``), drawn only if ``show`` and its
    stream is a terminal; the other keywords (``total``, ``desc``, ``unit``, ...) go to tqdm."""
    return tqdm(iterable, disable=None if show else True, **keywords)
