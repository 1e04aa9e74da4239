"""The curated top level: ``import latentvi as lv`` reaches the public API, lazily, with docstrings
that give shapes and credit the papers."""

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import latentvi as lv

PUBLIC = [name for name in lv.__all__ if name != "__version__"]
# names whose method comes from a paper: their own docstring says which (author and year)
FROM_PAPERS = [
    "VAE", "CVAE", "E2C", "LinearGaussian", "LinearGaussianSSM", "WorldModel", "iwae_bound",
    "iwae_dreg", "reparameterized_elbo", "score_function_elbo", "gumbel_softmax_elbo",
    "LearnedBaseline", "LeaveOneOut", "MovingAverageBaseline", "LocalGaussians",
    "GaussianEncoder", "amortization_gap", "sequence_elbo", "fit_vi",
]  # fmt: skip
# the mathematical objects: their docstrings state shapes (``[*B]``, ``[K, D]`` …)
WITH_SHAPES = [
    name
    for name in PUBLIC
    if [*getattr(lv, name).__module__.split("."), ""][1]
    in ("distributions", "bounds", "gradients", "diagnostics", "inference", "models")
    and not name.endswith("Config")
]


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_resolves_with_a_docstring(name):
    value = getattr(lv, name)
    assert len((inspect.getdoc(value) or "").strip()) > 20, name
    assert name in dir(lv)


@pytest.mark.parametrize("name", WITH_SHAPES)
def test_math_objects_state_shapes(name):
    assert re.search(r"\[[^\]]*\]", inspect.getdoc(getattr(lv, name))), name


@pytest.mark.parametrize("name", FROM_PAPERS)
def test_methods_credit_their_papers(name):
    assert re.search(r"\b(19|20)\d\d\b", inspect.getdoc(getattr(lv, name))), name


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'elbow'"):
        lv.elbow  # noqa: B018


def test_import_is_light_and_the_package_is_typed():
    code = "import sys, latentvi; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
    assert (Path(lv.__file__).parent / "py.typed").is_file()
