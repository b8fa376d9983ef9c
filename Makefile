# uniter-tf: every target installs what it needs first (scripts/bootstrap.sh is idempotent).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_FLAGS ?= -p no:cacheprovider --timeout=1200

.PHONY: install demo test test-slow test-all bazel-test bench clean

install:
	@bash scripts/bootstrap.sh

## The README's first command: the whole pipeline on bundled sample data, then a serving query.
demo: install
	@PYTHONUNBUFFERED=1 $(PY) -m pipeline.demo

## The README's second command: the default test suite (everything not marked slow).
test: install
	$(PY) -m pytest $(PYTEST_FLAGS) -m "not slow" tests

## Tests marked slow (CI runs them as a separate step).
test-slow: install
	@# pytest exits 5 when nothing is marked slow; that is not a failure.
	$(PY) -m pytest $(PYTEST_FLAGS) -m "slow" tests || [ $$? -eq 5 ]

test-all: install
	$(PY) -m pytest $(PYTEST_FLAGS) tests

## Bazel (Debian's bazel-bootstrap 4.2.3, offline thanks to the stub repositories in WORKSPACE).
bazel-test: install
	@# The py_test launcher starts with `#!/usr/bin/env python`: the venv's bin/ provides that `python`.
	bazel test --python_path="$(abspath $(PY))" --test_env=PATH="$(abspath $(VENV))/bin:/usr/bin:/bin" //...

bench: install
	$(PY) bench/model_bench.py --quick

clean:
	rm -rf $(VENV) bazel-* .pytest_cache
