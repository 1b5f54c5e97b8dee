# Quick start: `make demo` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install lint test test-fast test-bench demo bench bench-gpu clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e ".[test]"
	touch $(STAMP)

# mypy cannot follow the editable install's import hook (the folders install as hyvid.*), so it reads them
# through links under build/mypy/hyvid/ (pyproject's mypy_path); its messages name files by those paths.
MYPY_LINKS := build/mypy/hyvid

# All three run, then lint fails if any did.
lint: install
	mkdir -p $(MYPY_LINKS)
	for p in cluster models pipelines store; do ln -sfn ../../../$$p $(MYPY_LINKS)/$$p; done
	status=0; \
	$(VENV)/bin/ruff check . || status=1; \
	$(VENV)/bin/mypy -p hyvid.models -p hyvid.store -p hyvid.cluster || status=1; \
	$(VENV)/bin/lint-imports || status=1; \
	exit $$status

# The benchmark-rot check (`benchmarks.scale --tiny`, minutes) runs in test-bench, keeping CI short.
test: install
	$(PY) -m pytest -q --durations=15 -m "not benchmark" tests

test-bench: install
	$(PY) -m pytest -q -m benchmark tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

demo: install
	$(VENV)/bin/hyvid demo --out demo_out

# Every module of benchmarks/ but the private helpers (_common.py, ...), __init__.py and the device
# benchmark (gpu.py, `make bench-gpu`: it needs a GPU).
bench: install
	for m in $$(cd benchmarks && ls *.py | grep -v '^_' | grep -v '^gpu\.py$$' | sed 's/\.py$$//'); do \
		$(PY) -m benchmarks.$$m || exit 1; \
	done

# The device benchmark (issue 22), on a machine with a CUDA GPU: <= 8 minutes on one H100, no network.
bench-gpu: install
	$(PY) -m benchmarks.gpu

clean:
	rm -rf demo_out .pytest_cache
