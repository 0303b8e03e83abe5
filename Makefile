# Two entry points for a fresh machine: `make demo` and `make test` (see README).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install system-deps demo test lint typecheck pytest sync-crds bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,workload]'
	touch $@

install: $(VENV)/.installed

# prometheus and kubectl for the tests that use them (installed with apt-get when missing). With
# ETJ_ALLOW_SKIPS=1 a missing tool skips its tests instead of failing the run.
ETJ_ALLOW_SKIPS ?=
system-deps:
	@if [ -z "$(ETJ_ALLOW_SKIPS)" ]; then .ci/system-deps; fi

demo: install
	$(PY) -m etj_operator demo

lint: install
	$(PY) -m ruff check .

typecheck: install
	$(PY) -m mypy

# pytest exits 5 when it collects nothing; that is reported, not hidden as a pass of real tests.
pytest: install system-deps
	ETJ_ALLOW_SKIPS=$(ETJ_ALLOW_SKIPS) ETJ_REQUIRE_SYSTEM_TOOLS=$(if $(ETJ_ALLOW_SKIPS),,1) \
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests were collected"; exit 0; fi; exit $$rc

test: lint typecheck pytest

# The chart ships a copy of the CRD; a test checks the two are identical.
sync-crds:
	cp crds/*.yaml charts/efficient-training-operator/crds/

# Benchmarks print figures (docs/benchmarks.md records them); not part of `make test`.
bench: install
	$(PY) -m pip install -q -c constraints.txt -e '.[bench]'
	$(PY) bench/harness_overhead.py
	$(PY) bench/compression.py
	$(PY) bench/telemetry_scale.py
	$(PY) bench/api_client.py
	$(PY) bench/operator_scale.py
	$(PY) bench/power_optimizer.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
