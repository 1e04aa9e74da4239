"""Learning-rate schedules, as pure functions of the epoch (so a resumed run gets the same rate).

* ``constant`` — ``lr`` throughout.
* ``burda`` — the IWAE paper's schedule (Burda, Grosse & Salakhutdinov 2016, section 5): for
  i = 0, 1, …, 7, ``3^i`` epochs at ``lr · 10^(−i/7)`` — 3280 epochs in all, the last rate held
  after that.
"""

from __future__ import annotations

SCHEDULES = ("constant", "burda")

__all__ = ["SCHEDULES", "learning_rate"]


def learning_rate(schedule: str, base_lr: float, epoch: int) -> float:
    """The learning rate for (0-based) ``epoch`` under ``schedule``."""
    if schedule == "constant":
        return base_lr
    if schedule == "burda":
        stage, end = 0, 1
        while epoch >= end and stage < 7:
            stage += 1
            end += 3**stage
        return base_lr * 10 ** (-stage / 7)
    raise ValueError(f"lr_schedule = {schedule!r} is invalid: choose one of {', '.join(SCHEDULES)}")
