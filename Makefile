# Quick start: `make demo` and `make test`. Both build their own virtualenv in .venv.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Reuse the torch version already installed for $(PY) (a local CPU build), else 2.13.0.
TORCH_VERSION ?= $(shell $(PY) -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null || echo 2.13.0)
STAMP := $(VENV)/.installed-$(TORCH_VERSION)
PIP := $(BIN)/python -m pip install --disable-pip-version-check -q

.PHONY: venv test lint demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py tensorvcs/_native.c Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) "torch==$(TORCH_VERSION)"
	$(PIP) -e ".[test]" "torch==$(TORCH_VERSION)"
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check tensorvcs tests bench examples
	$(BIN)/mypy tensorvcs

# Two workers (pytest-xdist), whole files to one worker: module-scoped fixtures (the DCP
# ranks, the shared CLI repositories) are built once. PYTEST_WORKERS=0 runs in one process.
PYTEST_WORKERS ?= 2
test: $(STAMP) lint
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadfile
	# the numpy path the native loops replace (what a machine without a C compiler runs)
	TVCS_NATIVE=0 $(BIN)/python -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) \
	    tests/test_stats.py tests/test_stats_inputs.py tests/test_codecs.py tests/test_dtypes.py

demo: $(STAMP)
	$(BIN)/python examples/demo.py

bench: $(STAMP)
	$(PIP) -e ".[bench]" "torch==$(TORCH_VERSION)"
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache demo-run bench/results
