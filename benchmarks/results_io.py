"""Shared by the benchmark scripts: time a call, write a result as JSON and echo it."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def save_results(path: str | Path, results: dict[str, Any]) -> dict[str, Any]:
    """Write ``results`` to ``path`` (creating its folder), print them, and return them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return results


def median_seconds(function: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``function()`` over ``repeats`` calls, after ``warmup``
    untimed calls."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)
