"""End-to-end runs of every sub-command on the smallest settings, and their error handling."""

import argparse
import json
import math
from pathlib import Path

import pytest
import torch

from latentvi.cli import main
from latentvi.jobs.cvae import conditional_data, load_cvae


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_vi_json_is_consistent_with_the_exact_answers(tmp_path, capsys):
    code, out, _ = run(
        capsys,
        "vi",
        "--steps", "200",
        "--num-points", "300",
        "--probe-draws", "100",
        "--refine-steps", "20",
        "--iwae-samples", "20",
        "--out", str(tmp_path),
        "--json",
    )  # fmt: skip
    assert code == 0
    results = json.loads(out)
    assert (tmp_path / "vi.png").is_file() and (tmp_path / "results.json").is_file()
    for fit in results["fits"].values():
        # log p(x) − ELBO is the KL to the exact posterior (both computed exactly), and ≥ 0.
        assert math.isclose(
            fit["gap_log_marginal_minus_elbo"], fit["kl_q_to_posterior"], rel_tol=1e-4, abs_tol=1e-5
        )
        assert fit["gap_log_marginal_minus_elbo"] >= 0
        # No fit beats the closed-form maximum likelihood.
        assert fit["log_marginal"] <= results["mle_log_likelihood"] + 1e-4
    variances = results["gradient_variance"]
    assert variances["score function"] > 5 * variances["reparameterization"]


@pytest.mark.parametrize(
    "argv",
    [
        ["vi", "--steps", "0"],
        ["vi", "--latent-dim", "12", "--data-dim", "10"],
        ["vi", "--steps", "ten"],
        ["train", "vae", "--dataset", "nope"],
        ["train", "vae", "--dataset", "digits", "--batch-size", "-1"],
        ["train", "vae", "--dataset", "digits", "--hidden", "a,b"],
        ["eval", "/nonexistent/run"],
        ["sample", "/nonexistent/run"],
        ["plot", "/nonexistent/run"],
        ["frobnicate"],
        ["imitate", "--task", "maze"],
        ["imitate", "--policy", "gail"],
        ["imitate", "--demos", "1"],
        ["train", "cvae", "--task", "colour"],
        ["train", "cvae", "--dataset", "digits", "--likelihood", "gaussian"],
    ],
)
def test_bad_options_exit_2_with_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "error:" in err


def test_vae_train_eval_sample_plot_resume_on_digits(tmp_path, capsys):
    run_dir = tmp_path / "run"
    common = ["--dataset", "digits", "--latent-dim", "2", "--hidden", "32", "--no-progress"]
    code, _, _ = run(
        capsys, "train", "vae", *common, "--max-steps", "20", "--out", str(run_dir), "--json"
    )
    assert code == 0
    # Resume to 40 steps.
    code, out, _ = run(
        capsys,
        "train", "vae", *common, "--max-steps", "40", "--out", str(run_dir), "--resume", "--json",
    )  # fmt: skip
    assert code == 0 and json.loads(out)["steps"] == 40
    # A fresh run into a used folder is refused, not overwritten.
    code, _, err = run(capsys, "train", "vae", *common, "--max-steps", "5", "--out", str(run_dir))
    assert code == 2 and "error" in err

    code, out, _ = run(capsys, "eval", str(run_dir), "--importance-samples", "50", "--json")
    assert code == 0
    result = json.loads(out)
    assert set(result) >= {
        "elbo",
        "log_likelihood",
        "elbo_stderr",
        "log_likelihood_stderr",
        "n_examples",
        "importance_samples",
    }
    assert result["n_examples"] == 300 and result["importance_samples"] == 50
    # The importance-sampled estimate is a tighter bound than the ELBO on the same data.
    assert result["log_likelihood"] >= result["elbo"]

    samples = tmp_path / "samples.png"
    assert run(capsys, "sample", str(run_dir), "--n", "9", "--out", str(samples))[0] == 0
    assert samples.is_file()
    code, out, _ = run(capsys, "plot", str(run_dir))
    assert code == 0
    names = {line.rsplit("/", 1)[-1] for line in out.split()}
    assert {"reconstructions.png", "samples.png", "manifold.png", "latent.png"} <= names


def test_imitate_prints_a_table_and_writes_results(tmp_path, capsys):
    out = tmp_path / "imitate"
    argv = ["imitate", "--policy", "cvae", "--steps", "30", "--seeds", "2", "--episodes", "4"]
    code, printed, _ = run(capsys, *argv, "--demos", "20", "--out", str(out))
    assert code == 0
    assert "success" in printed and "left" in printed and "right" in printed
    assert (out / "trajectories-cvae.png").is_file() and (out / "results.json").is_file()
    assert (out / "seed-0" / "config.json").is_file() and (out / "seed-1").is_dir()
    argv = ["imitate", "--task", "passages", "--policy", "lmp", "--steps", "20", "--seeds", "1"]
    argv += ["--episodes", "3", "--demos", "10", "--out", str(tmp_path / "lmp")]
    code, printed, _ = run(capsys, *argv, "--json")
    result = json.loads(printed)
    assert code == 0 and result["task"] == "passages" and result["policy"] == "lmp"
    assert set(result["summary"]["modes"]) == {"left", "middle", "right"}
    shares = sum(result["per_seed"][0]["modes"].values())
    assert shares <= 1 + 1e-9 and result["per_seed"][0]["episodes"] == 3


@pytest.mark.parametrize("task", ["label", "halves"])
def test_train_cvae_on_digits(task, tmp_path, capsys):
    out = tmp_path / task
    code, printed, _ = run(
        capsys,
        "train", "cvae", "--dataset", "digits", "--task", task, "--max-steps", "30",
        "--hidden", "32", "--latent-dim", "2", "--eval-examples", "50",
        "--importance-samples", "20", "--no-progress", "--no-tensorboard", "--out", str(out),
        "--json",
    )  # fmt: skip
    assert code == 0
    result = json.loads(printed)
    assert result["test_examples"] == 50 and result["task"] == task
    for figure in result["figures"]:
        assert Path(figure).is_file()
    assert (out / "run.json").is_file() and (out / "results.json").is_file()
    # The run folder reloads (JSON + safetensors) into the model that gave these numbers.
    model = load_cvae(out)
    x, y, _ = conditional_data(model.data_config, "test", 0)
    torch.manual_seed(0)
    estimate = model.log_likelihood(x[:50], y[:50], 20).mean().item()
    assert abs(estimate - result["cvae_log_likelihood"]) < 3 * result["cvae_log_likelihood_stderr"]
    if task == "halves":
        regressor = load_cvae(out / "regressor")
        exact = regressor.log_likelihood(x[:50], y[:50]).mean().item()
        assert exact == pytest.approx(result["regressor_log_likelihood"], rel=1e-5)
        assert math.isclose(
            result["gain"],
            result["cvae_log_likelihood"] - result["regressor_log_likelihood"],
            rel_tol=1e-6,
            abs_tol=1e-6,
        )


def test_every_command_prints_its_help():
    # Regression: a "%" in an option's help text made argparse's --help raise a TypeError.
    from latentvi.cli import build_parser

    def parsers(parser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    yield from parsers(child)

    found = list(parsers(build_parser()))
    assert len(found) > 8
    for parser in found:
        assert parser.format_help().startswith("usage:"), parser.prog
    with pytest.raises(SystemExit) as exit_info:
        main(["world-model", "train", "--help"])
    assert exit_info.value.code == 0


def test_json_output_never_holds_nan():
    import math

    from latentvi.cli_options import to_json

    result = {
        "elbo": -float("nan"),
        "curve": [1.0, math.inf],
        "inner": {"ok": 2.5, "bad": math.nan},
    }
    printed = to_json(result)
    parsed = json.loads(printed)  # strict JSON: no NaN or Infinity tokens
    assert "NaN" not in printed and "Infinity" not in printed
    assert parsed["elbo"] is None and parsed["curve"] == [1.0, None]
    assert parsed["inner"] == {"ok": 2.5, "bad": None}
    assert set(parsed["non_finite"]) == {"elbo", "curve[1]", "inner.bad"}
    assert "non_finite" not in json.loads(to_json({"a": 1.0}))


def test_version(capsys):
    import latentvi

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"latentvi {latentvi.__version__}"
