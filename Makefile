# Both targets set themselves up on a fresh machine: a virtualenv in .venv with the CPU
# build of torch 2.13.0 (installed first so nothing pulls a CUDA build) and fedsim.
VENV ?= .venv
PY := $(VENV)/bin/python
export FLWR_TELEMETRY_ENABLED := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install run test test-fast bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $@

run: install
	$(VENV)/bin/fedsim run scenarios/noniid.yaml

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

# Every paper-claim benchmark (fast digits profile, 3 seeds), each writing
# benchmarks/results/<name>.json, then the pages docs/results/*.md and README's summary.
# BENCH_ARGS="--dataset fashion_mnist" runs the Fashion-MNIST profile instead.
BENCHMARKS := sgm_epsilon fedau fednga fedspeed decentralized inversion privacy diff2_sweep
bench: install
	$(PY) benchmarks/runtime_overhead.py
	set -e; for b in $(BENCHMARKS); do nice $(PY) benchmarks/$$b.py $(BENCH_ARGS); done
	$(PY) benchmarks/render.py
