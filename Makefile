# The README's two set-up commands are `make run` and `make test`; everything else is optional.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# torch comes from this machine's local wheel cache (a CUDA build that also runs on CPU).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: run test venv lint samples corpus-small train-default bench bench-baseline clean

venv: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall when the project's dependencies change.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps gan-face-generate==1.1.1
	touch $@

# The scoring server on the bundled default model, on 127.0.0.1:8000 (it prints a curl to try).
run: $(STAMP)
	$(BIN)/synthdetect serve

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Rebuild the bundled sample images (deterministic apart from the C2PA signature).
samples: $(STAMP)
	$(BIN)/python scripts/make_samples.py detector/assets/samples

# Longer jobs (not part of the two set-up commands).
corpus-small: $(STAMP)
	$(BIN)/synthdetect corpus build --size small --out runs/corpus-small

# The bundled model from its pinned sources: SOURCES (the list) and MIRROR (git mirrors of its
# repositories; empty: clone the pinned commits), e.g. make train-default MIRROR=/data/mirrors
SOURCES ?= ../shared/data/wild-sources/sources.csv
MIRROR ?=
train-default: $(STAMP)
	scripts/train_default.sh $(SOURCES) "$(MIRROR)"

# Reference benchmark runs (CPU), committed under benchmarks/results/.
bench: $(STAMP)
	scripts/run_benchmarks.sh

# Re-record the quick profile's baseline after an intended change (new model, new corpus).
bench-baseline: $(STAMP)
	# rebuilt every time: the gate (make test) builds a fresh tiny corpus with the current code
	rm -rf runs/corpus-tiny-baseline
	$(BIN)/synthdetect corpus build --size tiny --out runs/corpus-tiny-baseline
	$(BIN)/synthdetect bench quick --data runs/corpus-tiny-baseline/manifest.csv --out benchmarks/results/quick-baseline.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
