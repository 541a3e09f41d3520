# make setup: .venv from requirements.txt (re-installs only when requirements.txt changed)
# make test:  ruff, then the test suite (installs first)
# make demo:  the whole chain on a small embedded dataset, on CPU (installs first)

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup test demo clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@# MuJoCo renders offscreen on the CPU through EGL (Mesa llvmpipe): install it where it is missing
	@ldconfig -p | grep -q libEGL_mesa || { echo "Installing Mesa EGL (offscreen rendering)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libegl1 libegl-mesa0 libgl1-mesa-dri libgles2; }
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.txt
	@# the toolkit's own packages, editable: tests, benchmarks and scripts import them from anywhere
	$(VENV)/bin/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: setup
	$(VENV)/bin/ruff check .
	HF_HUB_OFFLINE=1 MUJOCO_GL=egl WANDB_MODE=offline $(VENV)/bin/python -m pytest -q tests

clean:
	rm -rf outputs .pytest_cache

demo: setup
	bash scripts/demo.sh
