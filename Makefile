# make setup: .venv from requirements.txt (re-installs only when requirements.txt changed)
# make test:  the test suite (installs first)
# make demo:  the whole chain on a small embedded dataset, on CPU (installs first)

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup test demo clean

setup: $(STAMP)

$(STAMP): requirements.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $(STAMP)

test: setup
	HF_HUB_OFFLINE=1 MUJOCO_GL=egl WANDB_MODE=offline $(VENV)/bin/python -m pytest -q tests

clean:
	rm -rf outputs demo .pytest_cache
