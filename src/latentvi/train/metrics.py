"""The one metrics logger: ``metrics.jsonl`` (the record), ``metrics.csv`` and TensorBoard.

Keys are namespaced (``loss/…``, ``train/…``, ``eval/…``, ``perf/…``). Each :meth:`MetricsLogger.log`
call appends one JSON object ``{"step": int, "time": unix seconds, **metrics}`` to metrics.jsonl
(non-finite values are written as ``NaN``/``Infinity``, which :func:`read_metrics` and python's
``json`` read back). metrics.csv holds the same rows with the union of all keys as columns
(first-seen order, empty cells where a row lacks a key): rows are appended, and when a new key
appears the CSV is rewritten from metrics.jsonl with the wider header. TensorBoard scalars go to
``run_dir/tensorboard`` when ``torch.utils.tensorboard`` can be imported (needs the
``tensorboard`` package).

On resume, pass ``resume_step``: rows with a larger step (logged after the checkpoint being
resumed from) are dropped from both files and TensorBoard's events are purged past that step, so
curves do not show the replayed steps twice.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from latentvi.train.storage import replace_text

__all__ = ["MetricWindow", "MetricsLogger", "read_metrics"]

logger = logging.getLogger(__name__)

JSONL = "metrics.jsonl"
CSV = "metrics.csv"
TENSORBOARD = "tensorboard"


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of ``run_dir/metrics.jsonl`` in order (a torn last line from a crash is skipped)."""
    path = Path(run_dir) / JSONL
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            logger.warning("skipping unreadable line %d of %s", number, path)
    return rows


def _scalar(name: str, value: Any) -> float | int:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"metric {name!r} has shape {tuple(value.shape)}; log scalars (reduce it first)"
            )
        return value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if hasattr(value, "item"):  # numpy scalar
            return value.item()
        raise ValueError(f"metric {name!r} = {value!r} is not a number; log numbers or tensors")
    return value


class MetricsLogger:
    """Writes metrics of one run to ``run_dir`` (see the module docstring for the files).

    Args:
        run_dir: the run folder (created if missing).
        tensorboard: also write TensorBoard scalars, if ``torch.utils.tensorboard`` imports.
        resume_step: keep earlier rows with ``step <= resume_step`` and append after them;
            None starts fresh (earlier files in `run_dir` are replaced).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        tensorboard: bool = True,
        *,
        resume_step: int | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.run_dir / JSONL
        self.csv_path = self.run_dir / CSV
        kept = []
        if resume_step is not None:
            kept = [row for row in read_metrics(self.run_dir) if row.get("step", 0) <= resume_step]
        replace_text(self.jsonl_path, "".join(_json_line(row) for row in kept))
        self._columns: list[str] = []
        for row in kept:
            self._columns.extend(key for key in row if key not in self._columns)
        self._rewrite_csv(kept)
        self._jsonl = open(self.jsonl_path, "a")  # noqa: SIM115 -- closed in close()
        self._writer = None
        if tensorboard:
            self._writer = _tensorboard_writer(self.run_dir / TENSORBOARD, resume_step)

    @property
    def tensorboard_enabled(self) -> bool:
        """Whether TensorBoard scalars are being written."""
        return self._writer is not None

    def log(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Append one row ``{"step", "time", **metrics}``; tensors become python numbers.
        Returns the row."""
        row: dict[str, Any] = {"step": int(step), "time": time.time()}
        for name, value in metrics.items():
            if name in ("step", "time"):
                raise ValueError(f"metric name {name!r} is reserved; use a namespaced name")
            row[name] = _scalar(name, value)
        self._jsonl.write(_json_line(row))
        self._jsonl.flush()
        new = [key for key in row if key not in self._columns]
        if new:
            self._columns.extend(new)
            self._rewrite_csv(read_metrics(self.run_dir))
        else:
            with open(self.csv_path, "a", newline="") as handle:
                csv.DictWriter(handle, self._columns, restval="", lineterminator="\n").writerow(row)
        if self._writer is not None:
            for name, value in row.items():
                if name not in ("step", "time"):
                    self._writer.add_scalar(name, value, global_step=row["step"])
        return row

    def _rewrite_csv(self, rows: list[dict[str, Any]]) -> None:
        text = io.StringIO()
        writer = csv.DictWriter(text, self._columns, restval="", lineterminator="\n")
        if self._columns:
            writer.writeheader()
        writer.writerows(rows)
        replace_text(self.csv_path, text.getvalue())

    def flush(self) -> None:
        """Push buffered rows to disk."""
        self._jsonl.flush()
        os.fsync(self._jsonl.fileno())
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the files (idempotent)."""
        if not self._jsonl.closed:
            self.flush()
            self._jsonl.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _json_line(row: Mapping[str, Any]) -> str:
    return json.dumps(row) + "\n"


def _tensorboard_writer(folder: Path, resume_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.info("tensorboard is not installed; writing metrics.jsonl/metrics.csv only")
        return None
    if resume_step is None and folder.is_dir():  # a fresh start: drop curves of earlier attempts
        for events in folder.glob("events.out.tfevents.*"):
            events.unlink()
    purge_step = None if resume_step is None else resume_step + 1
    return SummaryWriter(log_dir=str(folder), purge_step=purge_step)


class MetricWindow:
    """Per-key sums of step values since the last log, to report means over ``log_every`` steps.
    Its :meth:`state` is JSON-ready and saved in checkpoints, so that a resumed run reports the
    same means as one that never stopped."""

    def __init__(self, state: Mapping[str, Any] | None = None) -> None:
        state = state or {}
        self.sums: dict[str, float] = dict(state.get("sums", {}))
        self.counts: dict[str, float] = dict(state.get("counts", {}))
        self.steps = int(state.get("steps", 0))
        self.examples = float(state.get("examples", 0.0))
        self.seconds = float(state.get("seconds", 0.0))

    def add(self, values: Mapping[str, float], examples: int, seconds: float) -> None:
        """Add one step's values, its example count and the seconds it took."""
        for name, value in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
            self.counts[name] = self.counts.get(name, 0.0) + 1.0
        self.steps += 1
        self.examples += examples
        self.seconds += seconds

    def state(self) -> dict[str, Any]:
        """The window as JSON-ready values (the constructor takes it back)."""
        return {
            "sums": self.sums,
            "counts": self.counts,
            "steps": self.steps,
            "examples": self.examples,
            "seconds": self.seconds,
        }
