"""One run-folder schema for every training command: ``latentvi.load`` gives back the object
that was trained (same outputs on the same inputs), ``eval``/``sample``/``plot`` work on every
kind they apply to (and say in one line where they do not), and a refused command leaves its run
folder byte-identical.

Each kind is trained once, tiny, through the real command (module-scoped fixtures). The reference
outputs are those of the trained object itself: the model ``fit`` trained (captured as it is
passed to ``fit``) for VAE, CVAE and imitation runs; for agents and E2C, numbers the run computed
with its final weights (the last evaluation's return, E2C's goal stability and open-loop drift).
Loading and re-running on CPU repeats the same float operations in the same order, so equality
is exact.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch

import latentvi
from latentvi.cli import main
from latentvi.train.runs import RUN_FILE, read_run

QUIET = ["--no-progress", "--no-tensorboard"]
VAE = ["train", "vae", "--dataset", "digits", "--latent-dim", "2", "--hidden", "16"]
VAE += ["--max-steps", "10", "--valid-examples", "100", "--seed", "7", *QUIET]
CVAE = ["train", "cvae", "--dataset", "digits", "--task", "halves", "--latent-dim", "2"]
CVAE += ["--hidden", "16", "--max-steps", "10", "--eval-examples", "30"]
CVAE += ["--importance-samples", "10", "--seed", "5", *QUIET]
IMITATE = ["imitate", "--policy", "cvae", "--steps", "20", "--seeds", "1", "--episodes", "3"]
IMITATE += ["--demos", "20"]
LATENT_Q = ["rl", "latent-q", "--env", "Pendulum-v1", "--variant", "state", "--preset", "debug"]
LATENT_Q += ["--steps", "200", "--learning-starts", "150", "--eval-episodes", "1", *QUIET]
# One seed episode and one collected episode of 50 agent steps (action repeat 4), one update.
WORLD = ["world-model", "train", "--preset", "debug", "--steps", "400", "--action-repeat", "4"]
WORLD += ["--train-steps", "1", "--eval-episodes", "1", "--open-loop-horizon", "4"]
WORLD += ["--candidates", "8", "--cem-iterations", "1", "--plan-horizon", "2", *QUIET]
E2C = ["world-model", "train", "--agent", "e2c", "--preset", "debug", "--e2c-steps", "4"]
E2C += ["--e2c-transitions", "128", "--e2c-trials", "1", "--no-progress"]


def snapshot(folder: Path) -> dict[str, str] | None:
    """Every path under ``folder`` with the sha256 of its bytes ("dir" for folders)."""
    if not folder.exists():
        return None
    return {
        path.relative_to(folder).as_posix(): (
            hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        )
        for path in sorted(folder.rglob("*"))
    }


def refused(capsys, folder: Path, *argv: str, says: str) -> None:
    """``argv`` exits 2 with one line on stderr containing ``says``; ``folder`` is unchanged."""
    before = snapshot(folder)
    capsys.readouterr()
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err, err
    assert snapshot(folder) == before


def train(*argv: str, as_json: bool = True) -> dict:
    """Run a training command in this process; its printed JSON summary."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main([*argv, "--json"] if as_json else list(argv)) == 0
    return json.loads(printed.getvalue()) if as_json else {}


@contextlib.contextmanager
def captured_models(module):
    """The models ``module.fit`` trains, as they are when it returns."""
    models = []
    real = module.fit

    def recording(model, *args, **kwargs):
        models.append(model)
        return real(model, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "fit", recording)
        yield models


def same(a, b) -> None:
    assert torch.equal(a, b), (a - b).abs().max()


# --------------------------------------------------------------------------------------------------
# Runs of every kind (tiny), with what the trained object did


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def vae_run(runs):
    import latentvi.jobs.vae as job

    with captured_models(job) as models:
        train(*VAE, "--out", str(runs / "vae"))
    return runs / "vae", models[0].eval()


@pytest.fixture(scope="module")
def cvae_run(runs):
    import latentvi.jobs.cvae as job

    with captured_models(job) as models:
        results = train(*CVAE, "--out", str(runs / "cvae"))
    return runs / "cvae", models[0].eval(), models[1].eval(), results


@pytest.fixture(scope="module")
def imitation_run(runs):
    import latentvi.jobs.imitation as policies  # train_policy calls fit there

    with captured_models(policies) as models:
        results = train(*IMITATE, "--out", str(runs / "imitate"))
    return runs / "imitate", models[0].eval(), results


@pytest.fixture(scope="module")
def latent_q_run(runs):
    return runs / "latent-q", train(*LATENT_Q, "--out", str(runs / "latent-q"))


@pytest.fixture(scope="module", params=["planet", "dreamer", "slac"])
def world_model_run(request, runs):
    out = runs / request.param
    return out, train(*WORLD, "--agent", request.param, "--out", str(out))


@pytest.fixture(scope="module")
def e2c_run(runs):
    train(*E2C, "--out", str(runs / "e2c"), as_json=False)
    return runs / "e2c", json.loads((runs / "e2c" / "summary.json").read_text())


# --------------------------------------------------------------------------------------------------
# The schema


@pytest.mark.parametrize(
    ("fixture", "kind"),
    [("vae_run", "vae"), ("cvae_run", "cvae"), ("imitation_run", "imitation"),
     ("latent_q_run", "latent-q"), ("e2c_run", "e2c")],
)  # fmt: skip
def test_every_run_folder_records_its_kind_and_configs_in_run_json(fixture, kind, request):
    folder = request.getfixturevalue(fixture)[0]
    record = json.loads((folder / RUN_FILE).read_text())
    assert record["format"] == "latentvi-run-1" and record["kind"] == kind
    assert record["configs"] and all(isinstance(c, dict) for c in record["configs"].values())
    assert (folder / "checkpoints").is_dir() or kind == "imitation"
    assert (folder / "metrics.jsonl").is_file() or kind == "imitation"


# --------------------------------------------------------------------------------------------------
# latentvi.load: the object that was trained


def test_vae_loads_as_the_trained_model(vae_run):
    folder, trained = vae_run
    loaded = latentvi.load(folder)
    x = torch.bernoulli(torch.full((5, 1, 8, 8), 0.4), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        same(loaded.encode(x).mean, trained.encode(x).mean)
        same(loaded.encode(x).stddev, trained.encode(x).stddev)
        z = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
        same(loaded.decode(z).mean, trained.decode(z).mean)
        torch.manual_seed(2)
        elbo = loaded.elbo(x)
        torch.manual_seed(2)
        same(elbo, trained.elbo(x))


def test_cvae_and_its_regressor_load_as_trained(cvae_run):
    folder, cvae, regressor, _ = cvae_run
    loaded, loaded_regressor = latentvi.load(folder), latentvi.load(folder / "regressor")
    assert type(loaded) is type(cvae) and type(loaded_regressor) is type(regressor)
    generator = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((4, cvae.x_dim), 0.5), generator=generator)
    y = torch.bernoulli(torch.full((4, cvae.y_dim), 0.5), generator=generator)
    with torch.no_grad():
        torch.manual_seed(3)
        elbo = loaded.elbo(x, y)
        torch.manual_seed(3)
        same(elbo, cvae.elbo(x, y))
        same(loaded.prior(x).mean, cvae.prior(x).mean)
        same(loaded_regressor.log_likelihood(x, y), regressor.log_likelihood(x, y))


def test_imitation_policy_loads_as_trained(imitation_run):
    folder, trained, _ = imitation_run
    loaded = latentvi.load(folder)  # the job's folder: its first seed's policy
    assert loaded.policy_config.policy == "cvae" and loaded.task == "obstacle"
    states = torch.randn(6, trained.x_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = loaded.prior(states).mean
        same(z, trained.prior(states).mean)
        same(loaded.decode(states, z).mean, trained.decode(states, z).mean)
    same_module = latentvi.load(folder / "seed-0")
    same(same_module.prior(states).mean, z)


def test_latent_q_agent_loads_and_acts_as_trained(latent_q_run, capsys):
    """The run's last evaluation (its final weights, 1 episode on a fixed reset seed) is
    reproduced exactly by ``latentvi eval`` of the loaded agent."""
    folder, summary = latent_q_run
    agent = latentvi.load(folder)
    assert agent.env_steps == summary["env_steps"] == 200
    capsys.readouterr()
    assert main(["eval", str(folder), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["return_mean"] == summary["final_return_mean"]


def test_world_model_agent_loads_and_acts_as_trained(world_model_run, capsys):
    folder, summary = world_model_run
    agent = latentvi.load(folder)
    assert agent.agent_name == summary["agent"] and agent.env_steps == 400
    capsys.readouterr()
    assert main(["eval", str(folder), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["return_mean"] == summary["final_return_mean"]


def _as_older_format(folder: Path, copy: Path) -> None:
    """``copy``: ``folder`` as the commands wrote it before run.json (VAE and CVAE runs had a
    model.json; the other kinds only their config.json, summary.json or results.json)."""
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("episodes"))
    for index in copy.rglob(RUN_FILE):
        run = read_run(index.parent)
        if run.kind in ("vae", "cvae", "cvae-regressor"):
            kind = {"cvae-regressor": "regressor"}.get(run.kind, run.kind)
            spec = {"kind": kind, **run.info, **run.configs}
            (index.parent / "model.json").write_text(json.dumps(spec))
        index.unlink()


@pytest.mark.parametrize(
    "fixture", ["vae_run", "cvae_run", "imitation_run", "latent_q_run", "e2c_run"]
)
def test_older_run_folders_still_load(fixture, request, tmp_path):
    folder = request.getfixturevalue(fixture)[0]
    _as_older_format(folder, tmp_path / "old")
    assert not list((tmp_path / "old").rglob(RUN_FILE))
    old, new = latentvi.load(tmp_path / "old"), latentvi.load(folder)
    assert type(old) is type(new) and read_run(tmp_path / "old").kind == read_run(folder).kind
    for a, b in zip(old.state_dict().values(), new.state_dict().values(), strict=True):
        same(a, b)


def test_an_older_world_model_folder_still_loads(world_model_run, tmp_path):
    folder, summary = world_model_run
    _as_older_format(folder, tmp_path / "old")
    loaded, original = latentvi.load(tmp_path / "old"), latentvi.load(folder)
    for a, b in zip(loaded.state_dict().values(), original.state_dict().values(), strict=True):
        same(a, b)
    assert loaded.agent_name == summary["agent"]


def test_e2c_model_loads_as_trained(e2c_run, capsys):
    from latentvi.jobs.e2c import goal_stability, load_model, open_loop_error
    from latentvi.train.rng import mixed_seed

    folder, summary = e2c_run
    model = latentvi.load(folder)
    run = model.run_config
    assert goal_stability(model, run) == {
        "goal_drift": summary["goal_drift"],
        "goal_eigenvalues": summary["goal_eigenvalues"],
    }
    drift = open_loop_error(model, run, mixed_seed(run.seed, 2))
    assert drift[0] == summary["open_loop_latent_error"]["step_1"]
    own = load_model(folder)  # the job's own loader reads the same run.json
    for a, b in zip(own.state_dict().values(), model.state_dict().values(), strict=True):
        same(a, b)
    capsys.readouterr()
    assert main(["eval", str(folder), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["success_rate"] == summary["success_rate"]
    assert result["final_abs_angle_mean"] == summary["final_abs_angle_mean"]


# --------------------------------------------------------------------------------------------------
# eval, sample and plot over the kinds


def test_cvae_eval_gives_the_runs_own_numbers(cvae_run, capsys):
    folder, _, _, results = cvae_run
    for path, keys in (
        (folder, ("cvae_elbo", "cvae_log_likelihood")),
        (folder / "regressor", ("regressor_log_likelihood",)),
    ):
        capsys.readouterr()
        assert main(["eval", str(path), "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert {k: result[k] for k in keys} == {k: results[k] for k in keys}


def test_imitation_eval_gives_the_runs_own_numbers(imitation_run, capsys):
    folder, _, results = imitation_run
    capsys.readouterr()
    assert main(["eval", str(folder), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["per_seed"][0]["success"] == results["per_seed"][0]["success"]
    assert result["per_seed"][0]["modes"] == results["per_seed"][0]["modes"]


def test_sample_and_plot_write_figures_of_each_kind(vae_run, cvae_run, imitation_run,
                                                     latent_q_run, tmp_path, capsys):  # fmt: skip
    for folder in (vae_run[0], cvae_run[0]):
        png = tmp_path / f"{folder.name}.png"
        assert main(["sample", str(folder), "--n", "8", "--out", str(png)]) == 0
        assert png.stat().st_size > 0
    for folder in (cvae_run[0], imitation_run[0], latent_q_run[0]):
        out = tmp_path / f"{folder.name}-figures"
        capsys.readouterr()
        assert main(["plot", str(folder), "--out", str(out)]) == 0
        written = capsys.readouterr().out.split()
        assert written and all(Path(p).is_file() and Path(p).parent == out for p in written)


def plots_into_the_run(capsys, folder: Path, names: set[str]) -> None:
    """``latentvi plot RUN`` writes ``names`` into RUN/figures and nothing else in RUN."""
    before = snapshot(folder)
    capsys.readouterr()
    assert main(["plot", str(folder)]) == 0
    written = [Path(p) for p in capsys.readouterr().out.split()]
    assert {p.name for p in written} == names
    assert all(p.is_file() and p.parent == folder / "figures" for p in written)
    after = snapshot(folder)
    assert {k: v for k, v in after.items() if not k.startswith("figures")} == before
    shutil.rmtree(folder / "figures")


def test_plot_draws_a_world_model_runs_figures(world_model_run, capsys):
    names = {"curve.png", "open_loop.png", "open_loop_mse.png"}
    plots_into_the_run(capsys, world_model_run[0], names)


def test_plot_draws_an_e2c_runs_figures(e2c_run, capsys):
    plots_into_the_run(capsys, e2c_run[0], {"reconstructions.png", "latent.png", "control.png"})


def test_commands_that_do_not_apply_say_so_in_one_line(cvae_run, latent_q_run, capsys):
    refused(capsys, latent_q_run[0], "sample", str(latent_q_run[0]), says="sample does not apply")
    regressor = cvae_run[0] / "regressor"
    refused(capsys, cvae_run[0], "plot", str(regressor), says="a cvae-regressor run")
    refused(capsys, cvae_run[0], "eval", str(cvae_run[0]), "--split", "valid", says="split")


# --------------------------------------------------------------------------------------------------
# A refused command leaves the run folder byte-identical


def test_refused_train_vae_changes_nothing(vae_run, capsys, tmp_path):
    folder = vae_run[0]
    out = ["--out", str(folder)]
    refused(capsys, folder, *VAE, *out, says="already holds a run")  # the known bug: no --resume
    refused(capsys, folder, *VAE, *out, "--epochs", "0", says="epochs")
    refused(capsys, folder, *VAE, *out, "--likelihood", "gaussian", says="likelihood")
    mismatch = [*VAE, *out, "--resume", "--latent-dim", "3", "--max-steps", "20"]
    refused(capsys, folder, *mismatch, says="latent_dim")
    fresh = tmp_path / "fresh"
    refused(capsys, fresh, *VAE, "--out", str(fresh), "--resume", says="no checkpoint")
    assert not fresh.exists()
    # The folder still loads and evaluates after all that.
    assert latentvi.load(folder).config.latent_dim == 2


def test_refused_train_cvae_changes_nothing(cvae_run, capsys):
    folder = cvae_run[0]
    out = ["--out", str(folder)]
    refused(capsys, folder, *CVAE, *out, says="already holds a run")
    refused(capsys, folder, *CVAE, *out, "--eval-examples", "0", says="eval_examples")
    refused(capsys, folder, *CVAE, *out, "--likelihood", "gaussian", says="likelihood")


def test_refused_imitate_changes_nothing(imitation_run, capsys):
    folder = imitation_run[0]
    out = ["--out", str(folder)]
    refused(capsys, folder, *IMITATE, *out, says="already holds a run")
    refused(capsys, folder, *IMITATE, *out, "--seed", "4", says="already holds a run")
    refused(capsys, folder, *IMITATE, *out, "--seeds", "0", says="seeds")
    refused(capsys, folder, *IMITATE, *out, "--steps", "0", says="steps")


def test_refused_latent_q_changes_nothing(latent_q_run, capsys):
    folder = latent_q_run[0]
    out = ["--out", str(folder)]
    refused(capsys, folder, *LATENT_Q, *out, says="already holds a run")
    refused(capsys, folder, *LATENT_Q, *out, "--eval-every", "0", says="eval_every")
    resume = [*LATENT_Q, *out, "--resume", "--steps", "400"]
    refused(capsys, folder, *resume, "--hidden", "32,32", says="hidden")
    refused(capsys, folder, *resume, "--seed", "3", says="seed")


def test_refused_world_model_train_changes_nothing(world_model_run, capsys):
    folder, summary = world_model_run
    out = ["--agent", summary["agent"], "--out", str(folder)]
    refused(capsys, folder, *WORLD, *out, says="already holds a run")
    refused(capsys, folder, *WORLD, *out, "--steps", "0", says="steps")
    resume = [*WORLD, *out, "--resume", "--steps", "600"]
    refused(capsys, folder, *resume, "--free-nats", "2.5", says="free_nats")
    other = "dreamer" if summary["agent"] != "dreamer" else "planet"
    refused(capsys, folder, *resume, "--agent", other, says="resume = True is invalid")


def test_refused_e2c_changes_nothing(e2c_run, capsys, tmp_path):
    folder = e2c_run[0]
    out = ["--out", str(folder)]
    refused(capsys, folder, *E2C, *out, says="already holds a run")
    # a resume must keep the run's data and model options (control options may change)
    refused(capsys, folder, *E2C, *out, "--resume", "--e2c-transitions", "300",
            says="resume = True is invalid")  # fmt: skip
    refused(capsys, folder, *E2C, *out, "--e2c-steps", "0", says="steps")
    fresh = tmp_path / "fresh"
    big = [*E2C, "--out", str(fresh), "--e2c-controller", "value", "--e2c-value-cells", "200"]
    refused(capsys, fresh, *big, says="value_cells")
    assert not fresh.exists()


def test_run_json_records_the_preset_the_configs_came_from(latent_q_run, e2c_run):
    from latentvi.train.runs import read_run

    assert read_run(latent_q_run[0]).info["preset"] == "debug"
    assert read_run(e2c_run[0]).info["preset"] == "debug"


def test_world_model_run_json_records_its_agent_and_preset(world_model_run):
    from latentvi.train.runs import read_run

    info = read_run(world_model_run[0]).info
    assert info["preset"] == "debug" and info["agent"] in ("planet", "dreamer", "slac")
