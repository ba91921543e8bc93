# Entry points: `make test` (unit + integration), `make test-unit`, `make lint`, `make demo`.
# Each builds (or reuses) .venv/.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED ?= ../shared/data
STAMP := $(VENV)/.lingraft-installed
# torch is pinned to a CPU wheel (TORCH_SPEC): an unpinned torch pulls gigabytes of CUDA packages. On a GPU
# machine, set TORCH_SPEC to the CUDA build you want.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup test test-unit demo bench lint clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml scripts/bootstrap.sh
	VENV=$(VENV) TORCH_SPEC='$(TORCH_SPEC)' bash scripts/bootstrap.sh
	touch $@

# Everything under tests/ (setup.cfg's testpaths): the fast tier tests/unit and the integration
# tier tests/integration (shared data, 2-rank launches, the wheel installed into a fresh venv
# running the smoke preset). Under 15 minutes from nothing on 2 cores.
test: $(STAMP)
	LINGRAFT_SHARED=$(SHARED) $(PY) -m pytest $(PYTEST_ARGS)

# The fast tier only: no shared data, no multi-process training, well under a minute.
test-unit: $(STAMP)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# ruff (pyflakes, pycodestyle, bugbear; settings in pyproject.toml), then the house rules:
# no import cycles, no file over 400 lines.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) scripts/check_house.py

# `make demo PRESET=smoke` runs another preset; DEMO_ARGS passes flags (--dry-run, --force NAME...).
PRESET ?= demo
demo: $(STAMP)
	LINGRAFT_SHARED=$(SHARED) $(VENV)/bin/lingraft pipeline --config configs/$(PRESET).yaml $(DEMO_ARGS)

bench: $(STAMP)
	LINGRAFT_SHARED=$(SHARED) $(PY) bench/pack_throughput.py
	LINGRAFT_SHARED=$(SHARED) $(PY) bench/tokenizer_train.py

clean:
	rm -rf $(VENV) build *.egg-info runs
