# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# The virtualenv is (re)installed only when pyproject.toml changed (stamp file).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-integration bench install clean-cache

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ldvce demo --out runs/demo

# The default tier: unit and component tests (under 8 minutes on 2 cores).
test: $(STAMP)
	$(PY) -m pytest -q -m "not integration" --durations=15

# End-to-end runs: demo, notebooks, experiments, multi-process, Selenium, LDM training.
test-integration: $(STAMP)
	$(PY) -m pytest -q -m integration --durations=15

bench: $(STAMP)
	$(VENV)/bin/ldvce bench generate

clean-cache:
	rm -rf "$${LDVCE_CACHE:-.cache/ldvce}"
