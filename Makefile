# The two commands a newcomer runs: `make run` (the whole pipeline on the example corpus)
# and `make test`. Both install what they need on first use.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
PIP := $(VENV)/bin/pip
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: run test install services-up services-down bench

install: $(STAMP)

# torch first from the local CPU wheel, then the pinned stack, then DeepSpeed built against that
# torch (its sdist imports torch at build time; build isolation would download a CUDA torch).
$(STAMP): requirements.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-build-isolation deepspeed==0.19.8
	$(PIP) install -q --no-deps -e .
	$(VENV)/bin/python -m tasks.data.corpus
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/ladder run --profile tiny

# Headless Chromium drives the Prefect and MLflow UIs in the browser test; the authentication
# test runs MLflow on a PostgreSQL cluster of its own, made with Debian's server binaries.
# Two test processes, each module on one of them (a module's servers and ports are its own):
# much of the suite waits on servers and subprocesses, so the second core is not left idle. Modules
# are handed out longest first, by tests/durations.json (`make test PYTEST_ARGS=--write-durations` renews it).
test: $(STAMP)
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; }
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; }
	$(VENV)/bin/pytest -q -n 2 --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

bench: $(STAMP)
	for b in data tokenizer train evals align spikes scaling; do $(VENV)/bin/python bench/$$b.py || exit 1; done
