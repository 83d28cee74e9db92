# autolab: `make demo` runs the offline research loop; `make test` runs the test suite.
# Both create or reuse .venv and install what is needed (a second run is fast).
#
# PyTorch (only when .venv has none): on a CPU-only machine TORCH_SPEC comes from
# TORCH_CPU_INDEX (PyTorch's CPU wheels), so pip never pulls the multi-GB CUDA wheels; pip's
# own find-links and extra indexes still apply, so an offline mirror with a CPU wheel works.
# On a GPU machine TORCH_SPEC comes from the default index (the CUDA build). Or install torch
# into .venv yourself before `make`.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
STAMP := $(VENV)/.autolab-installed
PYTEST_ARGS ?=
# `make test` runs on pytest-xdist workers, one per core (at most 4), a module's tests on one
# worker (its module fixtures run once) and the longest modules first (tests/conftest.py);
# TEST_WORKERS=0 runs the suite in this one process.
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; n = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count(); print(max(1, min(4, n or 1)))" 2>/dev/null || echo 2)
XDIST := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

.PHONY: demo test test-extended redteam install clean-labs help

help:
	@echo "make demo   - set up .venv and run the offline research loop (nanochat cpu-tiny)"
	@echo "make test   - set up .venv and run the test suite on pytest-xdist, one worker per core (TEST_WORKERS=N)"
	@echo "make test-extended - the longest end-to-end tests and the whole red-team corpus"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	@if ! $(PY) -c "import torch" 2>/dev/null; then \
	  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	    echo "GPU found: installing $(TORCH_SPEC) (CUDA build)"; $(PY) -m pip install -q "$(TORCH_SPEC)"; \
	  else \
	    echo "no GPU: installing the CPU build of $(TORCH_SPEC) from $(TORCH_CPU_INDEX)"; \
	    $(PY) -m pip install -q --timeout 20 --retries 1 --index-url "$(TORCH_CPU_INDEX)" "$(TORCH_SPEC)"; \
	  fi; \
	fi
	$(PY) -m pip install -q -e ".[dev,ray]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/autolab demo

test: $(STAMP)
	$(PY) -m pytest -q -m "not gpu and not extended" $(XDIST) $(PYTEST_ARGS)

# what `make test` leaves out for time: the longest end-to-end runs, and the whole red-team corpus
test-extended: $(STAMP)
	$(PY) -m pytest -q -m "extended and not gpu" $(PYTEST_ARGS)
	AUTOLAB_REDTEAM_FULL=1 $(PY) -m pytest -q tests/test_redteam.py $(PYTEST_ARGS)

redteam: $(STAMP)
	AUTOLAB_REDTEAM_FULL=1 $(PY) -m pytest -q tests/test_redteam.py $(PYTEST_ARGS)

clean-labs:
	rm -rf labs
