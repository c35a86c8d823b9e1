# leafnet set-up. Two commands on a fresh clone: `make train` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS ?= dev

.PHONY: install train test test-all lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

## Train the faithful seed model (Adam 1e-4, batch 32, 640x640) on the embedded synthetic leaf set.
train: $(STAMP)
	$(PY) -m leafnet.train $(ARGS)

## The default test suite (everything not marked slow), on the CPU, in one pytest-xdist worker per
## CPU (WORKERS=0: in this process). Most tests wait on one core; two workers halve a 2-core run.
WORKERS ?= auto
test: $(STAMP)
	KERAS_BACKEND=torch $(PY) -m pytest -n $(WORKERS) $(ARGS)

## Every test, the slow ones included.
test-all: $(STAMP)
	KERAS_BACKEND=torch $(PY) -m pytest -n $(WORKERS) -m '' $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) -m leafnet.lab.bench $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
