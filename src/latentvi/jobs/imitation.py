"""The imitation job behind ``latentvi imitate``: demonstrations → a policy per seed → fresh
episodes → a table, a trajectory figure and ``results.json``.

One call trains ``policy`` once per seed on the same demonstrations (the seed sets the weights, the
batch order and the evaluation's latent draws; the episodes' start states are the same for every
seed), evaluates each on ``episodes`` fresh episodes, and reports every metric as mean ± std over
the seeds. With ``out`` the run folder holds ``results.json``, ``trajectories-<policy>.png`` (the
demonstrations beside the first seed's episodes) and, per seed, the training loop's run folder
(config, metrics, a safetensors checkpoint). Both are run folders of kind ``imitation``
(:mod:`latentvi.train.runs`): the job's ``run.json`` lists its seeds' folders, each seed's
``run.json`` records its policy and the dimensions its model is built from. Every folder is
checked before anything is written: a refused call leaves them as they were.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from latentvi.config import option, require, to_dict
from latentvi.data import Batches
from latentvi.envs.demos import DemoConfig, Demonstrations, collect_demonstrations
from latentvi.envs.tasks import TASKS, Episode, task_spec
from latentvi.rl.imitation import (
    EVAL_SEED,
    PolicyConfig,
    build_policy_model,
    evaluate_policy,
    make_controller,
    summarize,
)
from latentvi.train import TrainConfig, fit
from latentvi.train.checkpoint import find_latest
from latentvi.train.lock import run_lock
from latentvi.train.rng import seed_everything
from latentvi.train.runs import RUN_FILE, check_run_folder, read_run, write_run
from latentvi.train.storage import replace_text

__all__ = [
    "ImitationConfig",
    "describe_demonstrations",
    "format_imitation_table",
    "plot_episodes",
    "run_imitation",
    "run_seeds",
    "seed_folder",
]


def seed_folder(out: str | Path, seed: int) -> Path:
    """The run folder of one seed's policy inside an imitate job's folder."""
    return Path(out) / f"seed-{seed}"


def _check_folders(
    out: str | Path | None, policy: PolicyConfig, seeds: int, resume: bool = False
) -> None:
    """Refuse, before anything is written, an ``out`` whose seed folders (those of this call,
    and those an earlier job there lists in its run.json) hold checkpoints; with ``resume``,
    one that holds no imitate job, or whose seeds' checkpoints were trained with another policy
    (only the step budget may change)."""
    if out is None:
        return
    if resume:
        require(
            (Path(out) / RUN_FILE).is_file(),
            "resume",
            True,
            f"{str(out)!r} holds no imitate job to resume; drop --resume",
        )
        for offset in range(seeds):
            config = dataclasses.replace(policy, seed=policy.seed + offset)
            folder = seed_folder(out, config.seed)
            if _has_checkpoint(folder):
                check_run_folder(
                    folder, True, kind="imitation", configs={"policy": config},
                    fixed=("policy",), ignore={"policy": ("steps",)},
                )  # fmt: skip
        return
    folders = [seed_folder(out, policy.seed + offset) for offset in range(seeds)]
    if (Path(out) / RUN_FILE).is_file():
        folders += [Path(out) / name for name in read_run(out).info.get("runs", [])]
    for folder in folders:
        check_run_folder(folder, resume=False)


def _has_checkpoint(folder: Path) -> bool:
    return folder.is_dir() and find_latest(folder) is not None


@dataclasses.dataclass(frozen=True)
class ImitationConfig:
    """The task, how many seeds, and how many fresh episodes per seed."""

    task: str = option("obstacle", "obstacle (2 modes) or passages (3 modes)", choices=tuple(TASKS))
    seeds: int = option(3, "independent training runs (seeds 0..n-1); metrics are mean ± std")
    episodes: int = option(200, "fresh evaluation episodes per seed")
    progress: bool = option(
        True, "show a progress bar on stderr when it is a terminal (--no-progress: never)"
    )

    def __post_init__(self) -> None:
        require(self.task in TASKS, "task", self.task, f"choose one of {', '.join(TASKS)}")
        require(self.seeds >= 1, "seeds", self.seeds, "use 1 or more seeds")
        require(self.episodes >= 1, "episodes", self.episodes, "use 1 or more episodes")


def run_seeds(
    task: str,
    demonstrations: Demonstrations,
    policy: PolicyConfig,
    seeds: int,
    episodes: int,
    out: str | None = None,
    resume: bool = False,
    progress: bool = False,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[Episode]]:
    """Train ``policy`` with seeds ``policy.seed .. policy.seed + seeds − 1`` and evaluate each on
    the same ``episodes`` fresh episodes: ``(summary: mean ± std, per-seed metrics, the first
    seed's episodes)``. With ``resume``, a seed whose folder holds a checkpoint continues from it
    (bitwise as if it had never stopped); ``progress``: a bar per training run
    (:mod:`latentvi.progress`)."""
    names = task_spec(task).mode_names
    _check_folders(out, policy, seeds, resume)
    per_seed, first_runs = [], None
    for offset in range(seeds):
        config = dataclasses.replace(policy, seed=policy.seed + offset)
        run_dir = None if out is None else str(seed_folder(out, config.seed))
        continues = resume and run_dir is not None and _has_checkpoint(Path(run_dir))
        if run_dir is not None and not continues:
            write_run(
                run_dir, "imitation", {"policy": config}, task=task,
                state_dim=demonstrations.state_dim, action_dim=demonstrations.action_dim,
            )  # fmt: skip
        model, seconds = train_policy(
            demonstrations, config, out=run_dir, resume=continues, progress=progress
        )
        metrics, runs = evaluate_policy(
            task, make_controller(model, config, task), episodes, EVAL_SEED
        )
        per_seed.append({"seed": config.seed, "train_seconds": seconds, **metrics})
        first_runs = first_runs if first_runs is not None else runs
    summary = {
        key: summarize([r[key] for r in per_seed])
        for key in ("success", "collision", "timeout", "train_seconds")
    }
    summary["modes"] = {m: summarize([r["modes"][m] for r in per_seed]) for m in names}
    return summary, per_seed, first_runs


def run_imitation(
    job: ImitationConfig,
    policy: PolicyConfig,
    demos: DemoConfig | None = None,
    out: str | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train and evaluate ``policy`` on ``job.task`` (see the module docstring); JSON-ready.
    ``resume`` continues a job in ``out`` that was stopped: seeds with a checkpoint go on from
    it, the others train from the start."""
    if out is None:
        return _run_imitation(job, policy, demos, out, resume)
    with run_lock(out):  # one writer per run folder
        return _run_imitation(job, policy, demos, out, resume)


def _run_imitation(job, policy, demos, out, resume) -> dict[str, Any]:
    seed_everything(policy.seed)  # seed first, then build anything random
    demos = demos or DemoConfig()
    _check_folders(out, policy, job.seeds, resume)
    demonstrations = collect_demonstrations(job.task, demos)
    names = task_spec(job.task).mode_names
    if out is not None and not resume:
        runs = [seed_folder(out, policy.seed + i).name for i in range(job.seeds)]
        configs = {"job": job, "policy": policy, "demos": demos}
        write_run(out, "imitation", configs, task=job.task, runs=runs)
    summary, per_seed, first_runs = run_seeds(
        job.task, demonstrations, policy, job.seeds, job.episodes, out, resume, job.progress
    )
    result = {
        "task": job.task,
        "policy": policy.policy,
        "episodes_per_seed": job.episodes,
        "seeds": [r["seed"] for r in per_seed],
        "demonstrations": describe_demonstrations(demonstrations, names),
        "summary": summary,
        "per_seed": per_seed,
        "config": {"job": to_dict(job), "policy": to_dict(policy), "demos": to_dict(demos)},
    }
    if out is not None:
        result["figures"] = [str(_plot(job.task, policy, demos, first_runs, Path(out)))]
        replace_text(Path(out) / "results.json", json.dumps(result, indent=2) + "\n")
    return result


def describe_demonstrations(demonstrations: Demonstrations, names) -> dict[str, Any]:
    """Episode and transition counts of a demonstration set, and how many took each mode."""
    counts = demonstrations.modes.bincount(minlength=len(names)).tolist()
    return {
        "episodes": demonstrations.num_episodes,
        "transitions": int(demonstrations.lengths.sum()),
        "modes": dict(zip(names, counts, strict=True)),
    }


def _plot(task, policy: PolicyConfig, demos: DemoConfig, runs, out: Path) -> Path:
    return plot_episodes(task, policy, demos, runs, out / f"trajectories-{policy.policy}.png")


def plot_episodes(task, policy: PolicyConfig, demos: DemoConfig, runs, path: Path) -> Path:
    """The demonstrations beside a policy's episodes ``runs``, paths coloured by mode."""
    from latentvi.envs.demos import WaypointDemonstrator
    from latentvi.envs.tasks import make_task, rollout
    from latentvi.plots import plot_trajectories

    env = make_task(task)
    demonstrator = WaypointDemonstrator(task, demos.demo_noise, demos.demo_seed)
    shown = [rollout(env, demonstrator, demos.demo_seed + i) for i in range(len(runs))]
    panels = {"demonstrations": shown, f"{policy.policy} (seed {policy.seed})": runs}
    return plot_trajectories(
        panels,
        task_spec(task),
        path,
        title=f"{task}: paths coloured by mode; red: collision, grey: timeout",
    )


def format_imitation_table(results: list[dict[str, Any]]) -> str:
    """A plain-text table of :func:`run_imitation` results: mean ± std over seeds."""
    if not results:
        return ""
    names = list(results[0]["summary"]["modes"])
    header = ["policy", "success", "collision", *names, "train s"]
    rows = []
    for result in results:
        s = result["summary"]
        cells = [s["success"], s["collision"], *(s["modes"][m] for m in names)]
        rows.append(
            [
                result["policy"],
                *(f"{c['mean']:.3f} ± {c['std']:.3f}" for c in cells),
                f"{s['train_seconds']['mean']:.1f} ± {s['train_seconds']['std']:.1f}",
            ]
        )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    first = results[0]
    title = (
        f"task {first['task']}: {first['episodes_per_seed']} fresh episodes per seed, seeds "
        f"{','.join(map(str, first['seeds']))} (mean ± std over seeds; mode columns are shares "
        "of all episodes)"
    )
    head = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    return "\n".join([title, head, *lines])


def train_policy(
    demos: Demonstrations,
    config: PolicyConfig,
    out: str | None = None,
    resume: bool = False,
    progress: bool = False,
) -> tuple[nn.Module, float]:
    """Train ``config.policy`` on ``demos`` with :func:`latentvi.train.fit`; returns the model (in
    eval mode) and the training time in seconds. With ``out``, the loop writes its run folder
    there (config, metrics, a final safetensors checkpoint); ``progress``: its bar."""
    torch.manual_seed(config.seed)
    model, tensors = build_policy_model(demos, config)
    batches = Batches(*tensors, batch_size=min(config.batch_size, tensors[0].shape[0]))
    train = TrainConfig(
        max_steps=config.steps,
        lr=config.lr,
        seed=config.seed,
        progress=progress,
        tensorboard=False,
        log_every=max(1, config.steps // 10),
        out=out,
    )
    start = time.perf_counter()
    fit(
        model,
        batches.make_batches,
        batches,
        train,
        extra_config={"policy": to_dict(config)},
        resume=resume,
    )
    return model.eval(), time.perf_counter() - start
