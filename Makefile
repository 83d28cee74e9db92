# autolab: `make demo` runs the offline research loop; `make test` runs the test suite.
# Both create or reuse .venv and install what is needed (a second run is fast).
#
# PyTorch: on a CPU-only machine we install a CPU build first so that pip never pulls the
# multi-GB CUDA wheels; on a GPU machine set TORCH_SPEC (e.g. TORCH_SPEC="torch") or
# install torch into .venv yourself before `make`.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.autolab-installed
PYTEST_ARGS ?=

.PHONY: demo test install clean-labs help

help:
	@echo "make demo   - set up .venv and run the offline research loop (nanochat cpu-tiny)"
	@echo "make test   - set up .venv and run the test suite"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	@if ! $(PY) -c "import torch" 2>/dev/null; then \
	  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	    echo "GPU found: installing torch (CUDA build)"; $(PY) -m pip install -q torch; \
	  else \
	    echo "no GPU: installing the CPU build ($(TORCH_SPEC))"; $(PY) -m pip install -q "$(TORCH_SPEC)"; \
	  fi; \
	fi
	$(PY) -m pip install -q -e ".[dev,ray]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/autolab demo

test: $(STAMP)
	$(PY) -m pytest -q -m "not gpu" $(PYTEST_ARGS)

clean-labs:
	rm -rf labs
