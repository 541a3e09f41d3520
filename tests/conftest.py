import os

# Offline, CPU-only, headless: the same environment as `make test` sets, for a bare `pytest` too.
# (The toolkit's packages are installed editable by `make setup`; pytest puts tests/ itself on sys.path, so the
# helper modules here import as `from episode_files import ...`.)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("WANDB_MODE", "offline")
