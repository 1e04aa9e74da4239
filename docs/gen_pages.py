"""Write the API reference at build time: one page per public module of src/latentvi.

Run by mkdocs-gen-files (see mkdocs.yml). It walks the package tree, so a module added later gets
its page without an edit here; modules and packages whose name starts with ``_`` are private and
left out. Each page holds ``::: latentvi.x.y`` (mkdocstrings renders the docstrings), and
``reference/SUMMARY.md`` is the section's navigation (mkdocs-literate-nav). BENCHMARKS.md becomes
the page ``benchmarks.md``; the figures it and the results page show (``figures/NAME``) are copied
in from benchmarks/results, so the repository keeps one copy of each.
"""

from __future__ import annotations

import re
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src"
FIGURES = ROOT / "benchmarks" / "results"
# docs/results.md shows figures as ``figures/NAME.png``: each is copied from benchmarks/results.
FIGURE = re.compile(r"\]\(figures/([^)\s]+)\)")


def public_modules() -> list[tuple[str, ...]]:
    """Dotted module paths as tuples (a package by its ``__init__``), sorted, privates left out."""
    found = []
    for path in sorted((SOURCE / "latentvi").rglob("*.py")):
        parts = path.relative_to(SOURCE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        elif parts[-1] == "__main__":
            continue
        if any(part.startswith("_") for part in parts):
            continue
        found.append(tuple(parts))
    return found


def write_reference() -> None:
    nav = mkdocs_gen_files.Nav()
    for parts in public_modules():
        is_package = (SOURCE.joinpath(*parts) / "__init__.py").is_file()
        page = Path(*parts, "index.md") if is_package else Path(*parts).with_suffix(".md")
        # The first level is the package itself: "latentvi" is the section's own page.
        nav[parts[1:] or ("latentvi",)] = page.as_posix()
        with mkdocs_gen_files.open(Path("reference", page), "w") as handle:
            name = ".".join(parts)
            handle.write(f"---\ntitle: {name}\n---\n\n::: {name}\n")
        source = SOURCE.joinpath(*parts)
        source = source / "__init__.py" if is_package else source.with_suffix(".py")
        mkdocs_gen_files.set_edit_path(Path("reference", page), source.relative_to(ROOT))
    with mkdocs_gen_files.open("reference/SUMMARY.md", "w") as handle:
        handle.writelines(nav.build_literate_nav())


def write_benchmarks() -> str:
    """BENCHMARKS.md as the page ``benchmarks.md``, its figures read from ``figures/``."""
    text = (ROOT / "BENCHMARKS.md").read_text().replace("](benchmarks/results/", "](figures/")
    with mkdocs_gen_files.open("benchmarks.md", "w") as handle:
        handle.write(text)
    mkdocs_gen_files.set_edit_path("benchmarks.md", "BENCHMARKS.md")
    return text


def copy_figures(*pages: str) -> None:
    """Copy every ``figures/NAME`` the pages show from benchmarks/results into the site."""
    for name in sorted({name for page in pages for name in FIGURE.findall(page)}):
        source = FIGURES / name
        if not source.is_file():
            raise FileNotFoundError(f"the docs show {source}, which does not exist")
        with mkdocs_gen_files.open(Path("figures", name), "wb") as handle:
            handle.write(source.read_bytes())


write_reference()
copy_figures((ROOT / "docs" / "results.md").read_text(), write_benchmarks())
