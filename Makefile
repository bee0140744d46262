PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test lint bench calibrate clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# Until the HTTP service lands, `make run` shows the CLI working on an image of yours: IMAGE=path/to/photo.jpg
run: setup
	@$(BIN)/facegate --help
	@if [ -n "$(IMAGE)" ]; then $(BIN)/facegate detect "$(IMAGE)"; fi

test: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/lfw.py
	$(BIN)/python bench/throughput.py

calibrate: setup
	$(BIN)/python bench/calibrate.py

clean:
	rm -rf $(VENV) facegate-data .pytest_cache
