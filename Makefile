# Two front-door targets (see README): `make compare` runs the main job, `make test` the tests.
# Both create .venv on first use. torch 2.13.0 (CPU build) is installed before anything else,
# and constraints.txt pins it so no extra can pull a newer torch with its CUDA packages.
# CI (.ci/run) runs `make lint typecheck test`: ruff's lint and format check, mypy, pytest.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: setup test lint format typecheck compare bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# timm, a test reference for corrected decay, without its dependencies: its package import needs
	# torchvision (no CPU build; it would pull a CUDA torch), tests/test_timm_corrected.py loads only
	# its optimizer files.
	PIP_CONSTRAINT=constraints.txt $(PIP) install --quiet --no-deps timm==1.0.31
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet torch==2.13.0
	PIP_CONSTRAINT=constraints.txt $(PIP) install --quiet -e ".[all,peers,test,dev]"
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

compare: $(STAMP)
	$(VENV)/bin/decoupled compare

bench: $(STAMP)
	$(VENV)/bin/decoupled bench

clean:
	rm -rf $(VENV) build dist src/*.egg-info
