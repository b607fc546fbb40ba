# The README's two set-up commands are `make run` and `make test`; everything else is optional.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# torch comes from this machine's local wheel cache (a CUDA build that also runs on CPU).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: run test venv lint samples clean

venv: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall when the project's dependencies change.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps gan-face-generate==1.1.1
	touch $@

run: $(STAMP)
	cd detector/assets/samples && $(abspath $(BIN))/synthdetect score *

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Rebuild the bundled sample images (deterministic apart from the C2PA signature).
samples: $(STAMP)
	$(BIN)/python scripts/make_samples.py detector/assets/samples

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
