"""One environment loop: collect → update → evaluate → checkpoint, built from four parts.

```python
with EnvLoop(run, make_env=..., make_agent=..., storage=..., schedule=..., describe=...,
             resume=resume) as loop:
    loop.train()                       # until run.steps environment steps
    ... figures from loop.agent, loop.state["curve"] ...
```

- **environment**: ``make_env() -> gym.Env``, called twice (training and evaluation);
- **agent**: ``make_agent(env) -> nn.Module`` with ``act``, ``update(batch) -> {name: float}``
  (a non-finite step raises ``FloatingPointError`` before it changes anything),
  ``optimizer_state()`` and ``load_optimizer_state(state)``;
- **storage**: :class:`~latentvi.train.env_schedules.ReplayStorage` (transitions in memory) or
  :class:`~latentvi.train.env_schedules.EpisodeStorage` (finished episodes on disk);
- **schedule**: :class:`~latentvi.train.env_schedules.StepSchedule` (an update every few agent
  steps, checkpoints at episode boundaries: latent-Q) or
  :class:`~latentvi.train.env_schedules.EpisodeSchedule` (random seed episodes, then a block of
  updates before each collected episode: PlaNet, Dreamer, SLAC).

The loop owns the run folder: it checks it before writing anything
(:func:`~latentvi.train.runs.check_run_folder`: no fresh run over an old one, no resume without a
checkpoint or with other model-defining options), writes ``run.json`` from the job's
:class:`RunRecord` and ``config.json``, and resumes. It owns
the seed (set first, before any part is built), the counters (``state``: environment steps,
episodes, the evaluation curve, the schedules' next steps), evaluation (``eval_episodes`` episodes
without exploration, reset seeds ``mixed_seed(seed, EVAL_SEED, i)``, under their own random
state), ``metrics.jsonl`` (:class:`~latentvi.train.metrics.MetricsLogger`), the progress bar,
divergence (:class:`~latentvi.train.errors.TrainingDivergedError`: a non-finite update, a loss
or gradient norm that explodes, :class:`~latentvi.train.step.MetricGuard`, or weights that
are not finite or over :data:`~latentvi.train.step.WEIGHT_LIMIT` when a checkpoint is due, so
the kept checkpoint is always from before a divergence) and checkpoints (the agent's
weights and optimizers, the storage's state, the action generator, the counters and every random
state; named by environment step). Environment steps count the underlying environment's steps
(an agent step with action repeat R counts R).

SIGTERM / SIGINT (:mod:`latentvi.train.signals`) stop the run between two steps with a
checkpoint and raise :class:`~latentvi.train.signals.RunStopped`; an interrupted evaluation or
episode is dropped and done again on resume.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentvi.config import option, require, require_int
from latentvi.memory import require_training_memory
from latentvi.progress import progress_bar
from latentvi.train.checkpoint import find_latest, load_checkpoint, save_checkpoint
from latentvi.train.config import resolve_device
from latentvi.train.errors import TrainingDivergedError
from latentvi.train.lock import run_lock
from latentvi.train.metrics import MetricsLogger
from latentvi.train.rng import isolated_rng, mixed_seed, seed_everything
from latentvi.train.runs import check_run_folder, write_run
from latentvi.train.signals import StopRequest, stop_on_signals
from latentvi.train.step import (
    EXPLOSION_FACTOR,
    WARMUP_STEPS,
    WEIGHT_LIMIT,
    MetricGuard,
    largest_weight,
)
from latentvi.train.storage import replace_text

__all__ = [
    "CURVE_COLUMNS",
    "EVAL_SEED",
    "EnvLoop",
    "EnvRunConfig",
    "RunRecord",
    "evaluation_returns",
    "next_multiple",
    "write_curve",
]

logger = logging.getLogger(__name__)

EVAL_SEED = 1_000_000
CURVE_COLUMNS = ("env_step", "return_mean", "return_std", "episodes", "wall_seconds")


@dataclasses.dataclass(frozen=True)
class EnvRunConfig:
    """The environment, the step budget, evaluation and the run folder of an agent's run."""

    env: str = option("Pendulum-v1", "Gymnasium environment id")
    image_size: int = option(64, "height and width of the pixel observations")
    grayscale: bool = option(True, "one grayscale channel per frame instead of RGB")
    action_repeat: int = option(2, "environment steps per agent action")
    steps: int = option(30_000, "environment steps of training (action repeat included)")
    eval_every: int = option(2500, "environment steps between evaluations")
    eval_episodes: int = option(10, "episodes per evaluation (no exploration)")
    checkpoint_every: int = option(10_000, "environment steps between checkpoints")
    keep_checkpoints: int = option(2, "newest checkpoints kept on disk")
    seed: int = option(0, "seed of the networks, the samplers and the episodes")
    device: str = option("cpu", "cpu, cuda or auto", choices=("cpu", "cuda", "auto"))
    out: str | None = option(None, "run folder (required)")
    progress: bool = option(
        True, "show a progress bar on stderr when it is a terminal (--no-progress: never)"
    )
    tensorboard: bool = option(True, "also write TensorBoard scalars")

    def __post_init__(self) -> None:
        for name in (
            "image_size", "action_repeat", "steps", "eval_every", "eval_episodes",
            "checkpoint_every", "keep_checkpoints",
        ):  # fmt: skip
            require_int(getattr(self, name), name, 1, "use a positive integer")
        require(
            self.device in ("cpu", "cuda", "auto"), "device", self.device, "use cpu, cuda or auto"
        )


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """What the run folder's ``run.json`` records (:mod:`latentvi.train.runs`): the run's
    ``kind``, its resolved ``configs`` by name, the names among them that define the model
    (``fixed``: a resume must match them, but for the fields in ``ignore[name]``, e.g. the step
    budget) and ``info``, the shapes the agent is built from."""

    kind: str
    configs: Mapping[str, Any]
    fixed: tuple[str, ...]
    ignore: Mapping[str, Iterable[str]] = dataclasses.field(default_factory=dict)
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def evaluation_returns(
    play: Callable[[int], float | None], episodes: int, run_seed: int, rng_seed: int
) -> list[float]:
    """The returns of a run's evaluation: ``play(reset_seed)`` for ``episodes`` episodes with
    reset seeds ``mixed_seed(run_seed, EVAL_SEED, i)``, under their own random state
    (``isolated_rng(rng_seed)``); it ends early when ``play`` returns None (a stop request)."""
    returns = []
    with isolated_rng(rng_seed):
        for index in range(episodes):
            total = play(mixed_seed(run_seed, EVAL_SEED, index))
            if total is None:
                break
            returns.append(total)
    return returns


def next_multiple(step: int, every: int) -> int:
    """The first multiple of ``every`` after ``step``."""
    return (step // every + 1) * every


def write_curve(path: Path, curve: list[dict[str, Any]]) -> None:
    """The evaluation curve as CSV (:data:`CURVE_COLUMNS`)."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, CURVE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(curve)


class EnvLoop:
    """A run of an agent in an environment (module docstring); a context manager that closes
    the environments and the metrics files and turns SIGTERM / SIGINT into stop requests.

    Args:
        run: the shared run settings (a subclass adds the job's own).
        make_env: ``() -> env``.
        make_agent: ``env -> agent`` (moved to the run's device here).
        storage: where collected experience goes (see :mod:`latentvi.train.env_schedules`).
        schedule: when to collect and when to update.
        describe: ``env -> JSON-ready config`` saved as ``config.json`` and in checkpoints.
        record: ``env -> RunRecord``, what ``run.json`` holds and a resume must match.
        resume: continue from the latest checkpoint in ``run.out``.
        eval_rng_seed: seed of evaluation's own random state (default from ``run.seed``).
        divergence_hint: how to go on after a diverged update (ends the error message).
    """

    def __init__(
        self,
        run: EnvRunConfig,
        *,
        make_env: Callable[[], Any],
        make_agent: Callable[[Any], torch.nn.Module],
        storage: Any,
        schedule: Any,
        describe: Callable[[Any], dict[str, Any]],
        record: Callable[[Any], RunRecord],
        resume: bool = False,
        eval_rng_seed: int | None = None,
        divergence_hint: str = "start again with lower learning rates",
        network_options: tuple[str, ...] = ("the network sizes",),
    ) -> None:
        require(run.out is not None, "out", run.out, "give a run folder, e.g. --out runs/agent")
        self.run, self.storage, self.schedule = run, storage, schedule
        self.out = Path(run.out)
        self.eval_rng_seed = mixed_seed(run.seed, EVAL_SEED) if eval_rng_seed is None else (
            eval_rng_seed
        )  # fmt: skip
        self.divergence_hint = divergence_hint
        self.guard = MetricGuard()  # scales from the first updates of this start (or resume)
        check_run_folder(self.out, resume, holds_run=storage.holds_run(self.out))
        self._check_memory(make_env, make_agent, network_options)  # before seeding and writing
        latest = find_latest(self.out) if resume else None
        self.env = self.eval_env = None
        self.metrics_logger = self.bar = self._stack = None
        self.stop = StopRequest()  # never set outside the context
        self.device = resolve_device(run.device)
        seed_everything(run.seed)
        self._lock = run_lock(self.out)  # one writer per run folder, until __exit__
        self._lock.__enter__()
        try:
            self._build(make_env, make_agent, describe, record, latest)
        except BaseException as error:
            self._close_envs()
            self._unlock(type(error), error, error.__traceback__)
            raise

    def _build(self, make_env, make_agent, describe, record, latest: Path | None) -> None:
        run, storage = self.run, self.storage
        self.env = make_env()
        self.eval_env = make_env()
        self.agent = make_agent(self.env).to(self.device)
        self.spec = describe(self.env)
        self.record = record(self.env)
        if latest is not None:  # the run's model-defining options must be these (writes nothing)
            check_run_folder(
                self.out, True, kind=self.record.kind, configs=self.record.configs,
                fixed=self.record.fixed, ignore=self.record.ignore,
            )  # fmt: skip
        storage.open(self.env, self.out, mixed_seed(run.seed, 1))
        self.generator = np.random.default_rng(mixed_seed(run.seed, 2))
        self.state: dict[str, Any] = {
            "env_steps": 0, "episodes": 0, "curve": [], "wall": 0.0, "next_eval": 0,
            "next_checkpoint": run.checkpoint_every, **self.schedule.initial_state(),
        }  # fmt: skip
        self.resumed = latest is not None
        if latest is not None:
            loaded = load_checkpoint(latest, self.agent, map_location=self.device)
            self.agent.load_optimizer_state(loaded["optimizers"])
            self.state = loaded["counters"]
            storage.restore(loaded, self.state)
            self.generator.bit_generator.state = loaded["action_generator"]
            logger.info("resumed %s at environment step %d", latest, self.state["env_steps"])
        else:
            write_run(self.out, self.record.kind, self.record.configs, **self.record.info)
            replace_text(self.out / "config.json", json.dumps(self.spec, indent=2) + "\n")

    def _check_memory(self, make_env, make_agent, network_options) -> None:
        """Refuse in one line a run whose agent and storage cannot fit in the memory available
        now (:func:`~latentvi.memory.require_training_memory`)."""
        env = make_env()
        try:
            stored, what = self.storage.projected_bytes(env, self.run)
            require_training_memory(lambda: make_agent(env), "the agent", network_options,
                                    stored, what, self.storage.options)  # fmt: skip
        finally:
            env.close()

    # --- the context: environments, metrics files, stop requests -------------------------------
    def __enter__(self) -> EnvLoop:
        self._stack = stop_on_signals()
        self.stop = self._stack.__enter__()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if self.metrics_logger is not None:
                self.metrics_logger.close()
            self._close_envs()
        finally:
            try:
                self._release_signals(kind, error, traceback)
            finally:
                self._unlock(kind, error, traceback)

    def _unlock(self, kind=None, error=None, traceback=None) -> None:
        """Release the run folder's lock (once); an ``OSError`` or ``MemoryError`` passing
        through becomes a one-line ``RunFailedError``."""
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.__exit__(kind, error, traceback)

    def _release_signals(self, kind=None, error=None, traceback=None) -> None:
        """Leave the stop-request mode (once): raises ``RunStopped`` for a request still
        pending after a clean block."""
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.__exit__(kind, error, traceback)

    def _close_envs(self) -> None:
        for env in (self.env, self.eval_env):
            if env is not None:
                env.close()

    # --- the loop ----------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Run the schedule to ``run.steps`` environment steps, evaluate at the end (unless the
        last evaluation was there) and write the final checkpoint; returns the counters. After
        it, SIGTERM / SIGINT are no longer stop requests (the caller's handlers are back)."""
        run, state = self.run, self.state
        self.metrics_logger = MetricsLogger(
            self.out, tensorboard=run.tensorboard,
            resume_step=state["env_steps"] if self.resumed else None, hparams=self.spec,
        )  # fmt: skip
        self.bar = progress_bar(total=run.steps, initial=state["env_steps"], show=run.progress,
                        unit="step")  # fmt: skip
        self.started = time.perf_counter() - state["wall"]
        try:
            self.schedule.train(self)
            if not state["curve"] or state["curve"][-1]["env_step"] != state["env_steps"]:
                self.evaluate()
        finally:
            self.bar.close()
        self.checkpoint()
        # the run is complete on disk: from here on (figures) a signal stops the program at once
        self._release_signals()
        return state

    def elapsed(self) -> float:
        """Wall seconds of training so far (resumed runs included), also kept in the state."""
        self.state["wall"] = time.perf_counter() - self.started
        return self.state["wall"]

    def log(self, row: dict[str, float], step: int | None = None) -> None:
        self.metrics_logger.log(self.state["env_steps"] if step is None else step, row)

    def advance(self, env_steps: int) -> None:
        """Count ``env_steps`` more environment steps."""
        self.state["env_steps"] += env_steps
        self.bar.update(env_steps)

    def update(self, batch: Any) -> dict[str, float]:
        """One agent update, its metrics as floats; a non-finite one, or one whose loss or
        gradient norm exploded (:class:`~latentvi.train.step.MetricGuard`), becomes
        :class:`TrainingDivergedError`."""
        try:
            metrics = {name: float(value) for name, value in self.agent.update(batch).items()}
        except FloatingPointError as error:
            raise self._diverged(error) from error
        self.state["updates"] = self.state.get("updates", 0) + 1
        exploded = self.guard.exploded(metrics)
        if exploded is not None:
            name, value, scale = exploded
            raise self._diverged(
                f"{name} is {value:.3g}, over {EXPLOSION_FACTOR:g} times its scale {scale:.3g} "
                f"in the first {WARMUP_STEPS} updates; no checkpoint was written after it",
                taken=True,
            )
        return metrics

    def evaluate(self) -> None:
        """``eval_episodes`` episodes without exploration → a curve row and ``eval/`` metrics.
        A stop request drops the evaluation (it is done again on resume) and stops the run."""
        run, state = self.run, self.state
        returns = evaluation_returns(
            lambda seed: self.schedule.play(self, self.eval_env, seed),
            run.eval_episodes, run.seed, self.eval_rng_seed,
        )  # fmt: skip
        self.stop_if_requested()
        values = np.asarray(returns)
        result = {"return_mean": float(values.mean()), "return_std": float(values.std())}
        row = {"env_step": state["env_steps"], **result, "episodes": state["episodes"],
               "wall_seconds": self.elapsed()}  # fmt: skip
        state["curve"].append(row)
        self.log({f"eval/{k}": v for k, v in result.items()})
        self.bar.set_postfix(eval_return=f"{result['return_mean']:.1f}")
        state["next_eval"] = next_multiple(state["env_steps"], run.eval_every)

    def evaluate_if_due(self) -> None:
        if self.state["env_steps"] >= self.state["next_eval"]:
            self.evaluate()

    def checkpoint_if_due(self) -> None:
        if self.state["env_steps"] >= self.state["next_checkpoint"]:
            self.state["next_checkpoint"] = next_multiple(
                self.state["env_steps"], self.run.checkpoint_every
            )
            self.checkpoint()

    def checkpoint(self) -> Path:
        """Save everything a resumed run needs, named by environment step; refused
        (:class:`TrainingDivergedError`) while a weight is not finite or over
        :data:`~latentvi.train.step.WEIGHT_LIMIT`."""
        bad = largest_weight(self.agent.named_parameters())
        if bad is not None:
            raise self._diverged(
                f"weight {bad[0]} reaches {bad[1]:.3g} (limit {WEIGHT_LIMIT:g}), so no "
                "checkpoint was written",
                taken=True,
            )
        self.elapsed()
        extra = {
            "optimizers": self.agent.optimizer_state(),
            **self.storage.checkpoint_state(),
            "action_generator": self.generator.bit_generator.state,
            "counters": self.state,
        }
        return save_checkpoint(self.out, self.state["env_steps"], self.agent, extra_state=extra,
                               config=self.spec, keep=self.run.keep_checkpoints)  # fmt: skip

    def stop_if_requested(self) -> None:
        """After SIGTERM / SIGINT: checkpoint the current state and raise ``RunStopped`` (the
        schedule calls this where its state is consistent)."""
        if self.stop:
            path = self.checkpoint()
            raise self.stop.stopped(f"at environment step {self.state['env_steps']}", path)

    def final_row(self) -> dict[str, Any]:
        """The last evaluation (empty before the first)."""
        return self.state["curve"][-1] if self.state["curve"] else {}

    def _diverged(self, error: Any, taken: bool = False) -> TrainingDivergedError:
        """The one-line error of a diverged run: what happened (``error``), whether the last
        update was taken, and where to go on from."""
        state = self.state
        latest = find_latest(self.out)
        where = f"the last checkpoint is {latest}" if latest else "no checkpoint was written yet"
        updates = state.get("updates", 0)
        done = "" if taken else "; that step was not taken"
        return TrainingDivergedError(
            f"training diverged after {updates} updates ({state['env_steps']} "
            f"environment steps): {error}{done}. {where}: resume it "
            f"(--resume) or {self.divergence_hint}",
            step=updates if taken else updates + 1,
            metric=str(error),
            last_checkpoint=str(latest) if latest else None,
        )
