# leafnet set-up. Two commands on a fresh clone: `make train` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: install demo train test test-all lint bench clean

## Each target installs what it needs, once: leafnet alone (train), with Grad-CAM (demo), or with
## every extra and the test tools (test). `make install EXTRAS=app,onnx` installs chosen extras.
## --no-compile: Python compiles what it imports on first use; compiling all of torch up front
## was a third of a fresh `make demo`. The venv's own pip is new enough (editable installs need 21.3).
$(VENV)/.installed-%: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-compile -e '.[$*]'
	touch $@

EXTRAS ?= dev
install: $(VENV)/.installed-$(EXTRAS)

## A two-minute look from a fresh clone (one minute once installed): a short training run, predictions, Grad-CAM, and where everything is.
demo: $(VENV)/.installed-explain
	$(PY) -m leafnet.demo $(ARGS)

## Train the faithful seed model (Adam 1e-4, batch 32, 640x640) on the embedded synthetic leaf set.
train: $(VENV)/.installed-base
	$(PY) -m leafnet.train $(ARGS)

## The default test suite (everything not marked slow), on the CPU, in one pytest-xdist worker per
## CPU (WORKERS=0: in this process). Most tests wait on one core; two workers halve a 2-core run.
WORKERS ?= auto
test: $(VENV)/.installed-dev
	KERAS_BACKEND=torch $(PY) -m pytest -n $(WORKERS) $(ARGS)

## Every test, the slow ones included.
test-all: $(VENV)/.installed-dev
	KERAS_BACKEND=torch $(PY) -m pytest -n $(WORKERS) -m '' $(ARGS)

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .

bench: $(VENV)/.installed-dev
	$(PY) -m leafnet.lab.bench $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
