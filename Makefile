# One virtual environment in .venv; `make demo` and `make test` set it up on first use.
# TORCH is pinned to a release whose CPU wheel installs in seconds on the project's machines;
# on a CUDA machine use e.g. `make setup TORCH=torch` (the package itself accepts torch>=2.4).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
IPO := $(VENV)/bin/ipo

.PHONY: setup demo lint test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: setup
	$(IPO)

lint: setup
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/score.py

clean:
	rm -rf $(VENV)
