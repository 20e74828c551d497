# Both targets set themselves up on a fresh machine: a virtualenv in .venv with torch 2.13.0
# and fedsim. Which torch build you get depends on the index: from PyPI alone, torch==2.13.0
# on Linux x86_64 is the CUDA build (it pulls the nvidia-* CUDA wheels, several GB; it also
# runs on CPU-only machines). For the CPU-only build, take torch from PyTorch's CPU index:
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
# (torch is installed first, so the fedsim install keeps whichever build was chosen here).
TORCH_INDEX ?=
VENV ?= .venv
PY := $(VENV)/bin/python
export FLWR_TELEMETRY_ENABLED := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install run test test-fast bench docs docs-serve schema

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[test]"
	touch $@

run: install
	$(VENV)/bin/fedsim run scenarios/noniid.yaml

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

# Every benchmark, each writing benchmarks/results/<name>.json: first the engine
# measurements (timings: run them on an otherwise idle machine), then every paper-claim
# benchmark (fast digits profile, 3 seeds); then the docs tables, the pages
# docs/results/*.md and README's summaries are rendered from the results files.
# BENCH_ARGS="--dataset fashion_mnist" runs the Fashion-MNIST profile of the claims instead.
ENGINE_BENCHMARKS := runtime_overhead ray_parallel scale batched deployment
BENCHMARKS := sgm_epsilon fedau fednga fedspeed decentralized inversion privacy diff2_sweep async
bench: install
	set -e; for b in $(ENGINE_BENCHMARKS); do $(PY) benchmarks/$$b.py; done
	set -e; for b in $(BENCHMARKS); do nice $(PY) benchmarks/$$b.py $(BENCH_ARGS); done
	$(PY) benchmarks/runtime_overhead.py --render docs/engine.md
	$(PY) benchmarks/scale.py --render docs/engine.md
	$(PY) benchmarks/deployment.py --render docs/multinode.md
	$(PY) benchmarks/batched.py --render --into docs/batched.md
	$(PY) benchmarks/async.py --render
	$(PY) benchmarks/render.py

# the documentation site, built offline into site/ (mkdocs.yml; pages under docs/)
docs: install
	$(VENV)/bin/mkdocs build --strict --site-dir site

docs-serve: install
	$(VENV)/bin/mkdocs serve

# the scenario JSON Schema editors read (every scenario's first line points at it)
schema: install
	$(VENV)/bin/fedsim schema > schema/scenario.schema.json
