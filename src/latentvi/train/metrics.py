"""The one metrics logger: ``metrics.jsonl`` (the record), ``metrics.csv`` and TensorBoard.

Every key has one of the namespaces :data:`NAMESPACES` (``loss/…`` the minimized terms, ``train/…``
other training quantities, ``eval/…`` held-out ones and evaluation episodes, ``perf/…`` speed);
one without is refused, so every job's TensorBoard tags follow one scheme. Each :meth:`MetricsLogger.log`
call appends one JSON object ``{"step": int, "time": unix seconds, **metrics}`` to metrics.jsonl
(non-finite values are written as ``NaN``/``Infinity``, which :func:`read_metrics` and python's
``json`` read back). metrics.csv holds the same rows with the union of all keys as columns
(first-seen order, empty cells where a row lacks a key): rows are appended, and when a new key
appears the CSV is rewritten from metrics.jsonl with the wider header. TensorBoard scalars go to
``run_dir/tensorboard`` when ``torch.utils.tensorboard`` can be imported (needs the
``tensorboard`` package), with the run's resolved configs once as hparams (a fresh start, not a
resume); :func:`log_images` adds a job's figures (reconstructions, samples, open-loop rows) to the
same folder as TensorBoard images.

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

__all__ = ["NAMESPACES", "MetricWindow", "MetricsLogger", "log_images", "read_metrics"]

logger = logging.getLogger(__name__)

JSONL = "metrics.jsonl"
CSV = "metrics.csv"
TENSORBOARD = "tensorboard"
NAMESPACES = ("loss/", "train/", "eval/", "perf/")


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
        hparams: the run's resolved configs (nested JSON-ready dicts), written once to TensorBoard
            as hyperparameters (``group.field`` names) on a fresh start.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        tensorboard: bool = True,
        *,
        resume_step: int | None = None,
        hparams: Mapping[str, Any] | None = None,
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
        if self._writer is not None and hparams is not None and resume_step is None:
            _write_hparams(self._writer, hparams)

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
            if not name.startswith(NAMESPACES):
                raise ValueError(
                    f"metric name {name!r} has no namespace: start it with one of "
                    f"{', '.join(NAMESPACES)} (e.g. 'train/{name}')"
                )
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


def _flat(configs: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested configs as ``{"group.field": value}`` with the values TensorBoard's hparams take
    (numbers, text, booleans; anything else as its text)."""
    flat: dict[str, Any] = {}
    for key, value in configs.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return flat


def _write_hparams(writer, configs: Mapping[str, Any]) -> None:
    """The hparams plugin's three summaries into this run's own event file (``add_hparams``
    would start a sub-run folder)."""
    from torch.utils.tensorboard.summary import hparams

    for summary in hparams(_flat(configs), {}):
        writer.file_writer.add_summary(summary)


def log_images(
    run_dir: str | os.PathLike, step: int, images: Mapping[str, str | os.PathLike]
) -> list[str]:
    """Add the PNG figures ``images`` (``{tag: path}``, namespaced tags such as
    ``eval/open_loop``) to ``run_dir``'s TensorBoard events at ``step``, if tensorboard is
    installed; returns the tags written. Jobs call it after drawing their figures, when the run
    writes TensorBoard."""
    for tag in images:
        if not tag.startswith(NAMESPACES):
            raise ValueError(f"image tag {tag!r} has no namespace: use e.g. 'eval/{tag}'")
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return []
    import numpy as np
    from PIL import Image

    with SummaryWriter(log_dir=str(Path(run_dir) / TENSORBOARD)) as writer:
        for tag, path in images.items():
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))  # [H, W, 3] uint8
            writer.add_image(tag, pixels, global_step=step, dataformats="HWC")
    return list(images)


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
