# versadiff: `make demo` (set up + run the built-in default), `make test` (set up + run the tests).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH_VERSION ?= 2.13.0

.PHONY: setup setup-test demo demo-train test bench clean

# The venv is rebuilt only when pyproject.toml changes (stamp files).
$(VENV)/.stamp-base: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q -e ".[serve,eval]"
	touch $@

$(VENV)/.stamp-test: $(VENV)/.stamp-base
	$(PIP) install -q -e ".[test]"
	# FID cross-check (tests/test_fid_crosscheck.py): --no-deps, its torchvision requirement would replace torch
	$(PIP) install -q --no-deps torch-fidelity==0.4.0
	touch $@

setup: $(VENV)/.stamp-base
setup-test: $(VENV)/.stamp-test

demo: setup
	$(VENV)/bin/versadiff demo

demo-train: setup
	$(VENV)/bin/versadiff demo --train

test: setup-test
	$(PY) -m pytest tests -p no:cacheprovider

bench: setup-test
	$(PY) benchmarks/samplers.py
	$(PY) benchmarks/nets.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info
