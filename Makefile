# One task runner: these targets are exactly what the README and CI run.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
export CRYODECON_HOME ?= $(CURDIR)/.cryodecon

.PHONY: setup demo test test-all lint ui bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=24"
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

## The main job: simulate a session, sensor -> runs -> HyperScore table (embedded SQLite instance).
demo: setup
	$(BIN)/cryodecon demo

## The test suite (Postgres-backed test runs when CRYODECON_TEST_POSTGRES_URL is set; GPU tests skip without CUDA).
test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy cryodecon_science

## Dagster UI on the demo's instance (lineage, runs, reruns): http://127.0.0.1:3000
ui: setup
	DAGSTER_HOME=$(CRYODECON_HOME)/dagster_home $(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

## Benchmarks (results in benchmarks/results/; ASPIRE goes into its own venv, benchmarks/.venv-aspire).
bench: setup
	$(BIN)/python benchmarks/bench_pipeline.py
	bash benchmarks/setup_aspire.sh
	$(BIN)/python benchmarks/bench_ctf.py
	$(BIN)/python benchmarks/bench_ctf.py --size 4096
	$(BIN)/python benchmarks/bench_attribution.py
	$(BIN)/python benchmarks/bench_attribution.py --seed 11 --tag seed11
	$(BIN)/python benchmarks/bench_quality_v.py
	$(BIN)/python benchmarks/bench_library_ann.py
	$(BIN)/python benchmarks/bench_impact.py
	bash benchmarks/setup_tmc.sh
	$(BIN)/python benchmarks/bench_motion.py --large
	$(BIN)/python benchmarks/bench_read.py
	bash benchmarks/setup_topaz.sh
	$(BIN)/python benchmarks/bench_picking.py
	$(BIN)/python benchmarks/bench_restoration.py
	$(BIN)/python benchmarks/bench_restoration_speed.py --size 4096

clean:
	rm -rf $(CRYODECON_HOME)
