# robolearn: `make demo` runs the demo, `make test` the tests; both set up .venv first when needed.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# A CPU build of this exact torch is installed first and pinned in every later pip call: any looser
# request ("torch", or a range admitting a newer release) makes pip fetch the CUDA build (several GB).
TORCH := torch==2.13.0
APT_PACKAGES := libosmesa6 libgl1 libegl1 libusb-1.0-0 ffmpeg
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# MuJoCo picks its GL backend at import; OSMesa renders off-screen on any machine, with no display.
export MUJOCO_GL := osmesa
export PYOPENGL_PLATFORM := osmesa

.PHONY: help venv system-deps demo test test-slow bench lint clean distclean

help:
	@echo "make demo       run the end-to-end demo (sets up .venv first)"
	@echo "make test       run the fast test suite"
	@echo "make test-slow  run the slow tests (-m slow)"
	@echo "make bench      simulation and dataset throughput benchmarks -> bench/results/*.json"
	@echo "make lint       ruff check"
	@echo "make venv       create .venv and install robolearn with the dev extras"
	@echo "make clean      remove caches and build files; make distclean also removes .venv"

venv: $(VENV)/.stamp

# Reinstalls when the dependencies (pyproject.toml) or this recipe change; the system packages are
# checked every time (a few dpkg calls) since a machine can lose them while .venv stays.
$(VENV)/.stamp: pyproject.toml Makefile | system-deps
	@if [ ! -x $(PY) ]; then \
	  command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=/path/to/python3.11" >&2; exit 1; }; \
	  echo "creating $(VENV) with $(PYTHON)"; \
	  $(PYTHON) -m venv $(VENV); \
	fi
	$(PIP) install $(TORCH)
	$(PIP) install -e '.[dev,ros]' $(TORCH)
	touch $@

# OSMesa/GL for off-screen rendering, libusb for cameras and arms, ffmpeg for videos.
system-deps:
	@if ! command -v dpkg >/dev/null; then \
	  echo "warning: no dpkg; install $(APT_PACKAGES) with your package manager" >&2; exit 0; \
	fi; \
	missing=""; \
	for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  $(SUDO) apt-get update; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi

demo: venv
	MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa $(VENV)/bin/robolearn demo

test: venv
	$(PY) -m pytest -q

test-slow: venv
	$(PY) -m pytest -q -m slow

bench: venv
	mkdir -p bench/results
	$(VENV)/bin/robolearn bench sim --json bench/results/sim_throughput.json
	$(VENV)/bin/robolearn bench data --json bench/results/data_throughput.json

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
