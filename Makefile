# The two entry points a newcomer needs (README): `make demo` and `make test`.
# Both install what they need on a fresh Debian 12 machine (as root).
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python

.PHONY: setup prereqs ubuntu-bases demo test bench

setup: prereqs $(VENV)/.installed

prereqs:
	@bash scripts/testbed-prereqs.sh

# Local stand-ins for the pytorch images' Ubuntu 22.04/24.04 bases (tests only; cached).
ubuntu-bases: prereqs
	@bash scripts/ubuntu-bases.sh

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: setup
	$(PY) -m devbox.demo

test: setup ubuntu-bases
	$(PY) -m pytest -v tests

# Figures for docs/PERFORMANCE.md, then the slow (multi-GB) tests; none of it runs in `make test`.
bench: setup
	$(PY) -m bench
	$(PY) -m bench.delivery
	$(PY) -m bench.fleet
	$(PY) -m pytest -v -m slow tests
