"""The documentation site: configured consistently (fast), and built and executed (slow).

The fast tests read mkdocs.yml and the pages with the standard library only, so the default suite
needs nothing from the docs extra. The slow ones need it (`make test-slow` installs it): the
strict build (`make docs`) and every notebook run top to bottom by nbmake.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CONFIG = ROOT / "mkdocs.yml"
NOTEBOOKS = sorted((DOCS / "notebooks").glob("*.ipynb"))


def nav_targets() -> list[str]:
    """The page paths named in mkdocs.yml's nav (``- Title: path`` or ``- path``)."""
    text = CONFIG.read_text()
    nav = text[text.index("\nnav:") :]
    return re.findall(r"^\s*-\s*(?:[^:\n]+:\s*)?(\S+\.(?:md|ipynb)|\S+/)\s*$", nav, re.MULTILINE)


def test_every_nav_page_exists_and_every_notebook_is_in_the_nav():
    targets = nav_targets()
    assert "index.md" in targets and "getting-started.md" in targets
    for target in targets:
        if target in ("reference/", "benchmarks.md"):  # written at build time by docs/gen_pages.py
            continue
        assert (DOCS / target).is_file(), f"mkdocs.yml's nav names docs/{target}, which is missing"
    notebooks = {f"notebooks/{path.name}" for path in NOTEBOOKS}
    assert len(notebooks) >= 4 and notebooks <= set(targets)


def test_config_is_strict_and_builds_the_reference_from_the_tree():
    text = CONFIG.read_text()
    assert re.search(r"^strict: true$", text, re.MULTILINE)
    assert "docs/gen_pages.py" in text and "API reference: reference/" in text
    if importlib.util.find_spec("yaml") is not None:  # a full parse where PyYAML is installed
        import yaml

        config = yaml.safe_load(text)
        assert config["docs_dir"] == "docs" and config["site_dir"] == "site"
    assert "site/" in (ROOT / ".gitignore").read_text().split()


def test_figures_the_site_shows_exist():
    """The results page shows ``figures/NAME`` and BENCHMARKS.md ``benchmarks/results/NAME``; the
    build copies both from benchmarks/results."""
    figures = re.findall(r"\]\(figures/([^)\s]+)\)", (DOCS / "results.md").read_text())
    assert len(figures) >= 5, "docs/results.md shows too few figures"
    record = (ROOT / "BENCHMARKS.md").read_text()
    figures += re.findall(r"\]\(benchmarks/results/([^)\s]+)\)", record)
    for name in figures:
        assert (ROOT / "benchmarks" / "results" / name).is_file(), name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebooks_are_stored_executed_without_errors(path):
    """The site renders the stored outputs (mkdocs-jupyter, execute: false): they must be there,
    from one top-to-bottom run, with no error."""
    notebook = json.loads(path.read_text())
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code and [cell["execution_count"] for cell in code] == list(range(1, len(code) + 1))
    for cell in code:
        assert all(output["output_type"] != "error" for output in cell["outputs"])
        streams = [o for o in cell["outputs"] if o["output_type"] == "stream"]
        assert all(o["name"] == "stdout" for o in streams), "a warning was stored in the page"


def _needs(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is in the docs extra: `make test-slow` installs it")


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", NO_MKDOCS_2_WARNING="1")
    env["DISABLE_MKDOCS_2_WARNING"] = "true"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.slow
def test_docs_build_strict(tmp_path):
    _needs("mkdocs")
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")]
    result = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-5000:]
    site = tmp_path / "site"
    for page in ("index.html", "getting-started.html", "results.html", "notebooks/02_elbo.html"):
        assert (site / page).is_file(), page
    # One reference page per public module, found by walking the tree.
    assert (site / "reference/latentvi/bounds.html").is_file()
    assert (site / "reference/latentvi/inference/local.html").is_file()
    assert not list((site / "reference").rglob("_*.html"))


@pytest.mark.slow
def test_notebooks_run(tmp_path):
    _needs("nbmake")
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbmake",
        "--nbmake-timeout=600", "-o", "addopts=", *map(str, NOTEBOOKS),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-5000:]
