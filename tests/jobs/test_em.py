"""``latentvi em`` end to end at a tiny size: every method is reported, none beats the MLE."""

import itertools
import json

import pytest

from latentvi.cli import main
from latentvi.jobs.em import PPCA_METHODS, EMConfig, format_em_report, run_em

TINY = dict(data_dim=4, latent_dim=2, num_points=200, passes=6, batch_size=50,
            mixture_components=2, reference_iterations=100)  # fmt: skip


def test_em_job_reports_every_method_below_the_mle(tmp_path):
    results = run_em(EMConfig(out=str(tmp_path), **TINY))
    report = (tmp_path / "report.txt").read_text()
    assert report == format_em_report(results) + "\n"
    assert (tmp_path / "em.png").stat().st_size > 0
    assert json.loads((tmp_path / "results.json").read_text()) == results
    ppca = results["ppca"]
    mle = ppca["reference_log_likelihood"]
    assert set(ppca["fits"]) == set(PPCA_METHODS)
    for method, fit in ppca["fits"].items():
        assert method in report and f"{fit['log_marginal']:.4f}" in report
        # Scored in float64: no θ beats the closed-form maximum likelihood (global for PPCA).
        values = [record["log_marginal"] for record in fit["history"]]
        assert len(values) == TINY["passes"] + 1
        assert max(values) <= mle + 1e-9, method
        # Every method starts from the same θ₀.
        assert values[0] == ppca["fits"]["EM"]["history"][0]["log_marginal"]
    em = [record["log_marginal"] for record in ppca["fits"]["EM"]["history"]]
    assert all(b >= a - 1e-6 for a, b in itertools.pairwise(em))  # float32 fit steps
    assert ppca["fits"]["hard EM"]["noise_variance"] < 0.9 * ppca["mle_noise_variance"]
    mixture = results["mixture"]
    assert set(mixture["fits"]) == {"EM", "hard EM", "gradient ascent"}
    assert "Gaussian mixture" in report


def test_em_cli_json_and_bad_option(tmp_path, capsys):
    argv = ["em", "--out", str(tmp_path), "--json", "--mixture-components", "0"]
    for name in ("data_dim", "latent_dim", "num_points", "passes", "batch_size"):
        argv += [f"--{name.replace('_', '-')}", str(TINY[name])]
    assert main(argv) == 0
    results = json.loads(capsys.readouterr().out)
    assert "mixture" not in results and set(results["ppca"]["fits"]) == set(PPCA_METHODS)
    code = main(["em", "--latent-dim", "5", "--data-dim", "4", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "latent_dim" in err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("field, value", [("passes", 0), ("em_mode", "online"), ("tolerance", 0.0)])
def test_em_config_refuses(field, value):
    with pytest.raises(ValueError, match=field):
        EMConfig(**{field: value})
