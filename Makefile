# playitback: every target sets up its own virtual environment first (a fresh machine needs nothing else).
#   make test        ruff (make lint), then the test suite (under 10 minutes on 2 CPU cores)
#   make test-slow   also the slow end-to-end checks
#   make test-slurm  multi-process jobs: a private SLURM cluster (needs slurm-wlm, munge, root) and torchrun restarts
#   make demo        demo data -> encoder pretraining -> PlayItBack -> evaluation -> figures (CPU, minutes)
#                    make demo SEEDS=3 CONTROLS=1: 3 seeds, with the oracle, random and no-replay controls
#   make bench       the benchmarks, printing JSON lines
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# On the CPU machines of this project `pip install torch==2.13.0` takes a local CPU build; elsewhere pick the build
# for your machine, e.g. make TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128".
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
DEMO_DATA ?= demo_data
DEMO_RUNS ?= demo_runs
SEEDS ?= 1
CONTROLS ?=

.PHONY: setup lint test test-slow test-slurm demo bench clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -c "import torch, torchaudio" 2>/dev/null && { echo "torchaudio must not be installed"; exit 1; } || true
	touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(VENV)/bin/ruff check playitback tools bench tests

test: lint
	$(PY) -m pytest -q -m "not slow and not slurm"

test-slow: setup
	$(PY) -m pytest -q -m "not slurm"

# Installs slurm-wlm and munge where it can (root, apt-get). -v and --durations: the log names every test and what it
# took (CI shows the SLURM tests ran, not skipped).
test-slurm: setup
	@command -v slurmctld >/dev/null && command -v munged >/dev/null || \
		tests/install_debian.sh "the SLURM cluster tests of tests/slurm" slurm-wlm munge
	$(PY) -m pytest -v -m slurm --durations=0 tests/slurm

demo: setup
	$(PY) tools/demo.py --data $(DEMO_DATA) --runs $(DEMO_RUNS) --figs figs --seeds $(SEEDS) $(if $(CONTROLS),--controls)

bench: setup
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) $(DEMO_DATA) $(DEMO_RUNS) .pytest_cache
