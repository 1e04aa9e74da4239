"""Shared by the benchmark scripts: write a result as JSON and echo it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def save_results(path: str | Path, results: dict[str, Any]) -> dict[str, Any]:
    """Write ``results`` to ``path`` (creating its folder), print them, and return them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return results
