"""Training checkpoints: atomic save, safe load, `--resume auto`, retention.

A checkpoint is a dict of tensors and plain Python values only, so `torch.load(path, weights_only=True)`
loads it: no pickled code runs. Files are written under a temporary name (never ending in .pt), fsynced and
renamed, so a kill at any moment leaves every *.pt file complete. `checkpoint_latest.pt` is a hard link to
the newest step file (a copy where the filesystem has no hard links).
"""

import os
import re
import shutil
from pathlib import Path

import torch

from episode_format.atomic import atomic_output
from insertion_vla.errors import UserError

STEP_FILE = re.compile(r"^checkpoint_step_(\d+)\.pt$")
LATEST = "checkpoint_latest.pt"
BEST = "checkpoint_best.pt"


def step_path(ckpt_dir: Path, step: int) -> Path:
    return Path(ckpt_dir) / f"checkpoint_step_{step}.pt"


def save_checkpoint(state: dict, ckpt_dir, step: int) -> Path:
    """Write checkpoint_step_N.pt, then point checkpoint_latest.pt at it."""
    ckpt_dir = Path(ckpt_dir)
    path = step_path(ckpt_dir, step)
    try:
        with atomic_output(path) as tmp, open(tmp, "wb") as f:
            _torch_save(state, f)
        link_or_copy(path, ckpt_dir / LATEST)
    except UserError as err:  # names the file and the fix (disk full, unwritable directory)
        raise UserError(f"{err} Earlier checkpoints are intact: `--resume auto` continues from the newest.") from None
    return path


class _KeepOSError:
    """A file for torch.save that remembers the OS error of a failed write: torch.save itself reports a full disk
    or a file-size limit only as RuntimeError("... unexpected pos ...")."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data):
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self):
        self.file.flush()


def _torch_save(state: dict, file):
    writer = _KeepOSError(file)
    try:
        torch.save(state, writer)
    except RuntimeError:
        if writer.error is None:
            raise
        raise writer.error from None


def link_or_copy(src: Path, dst: Path):
    """Atomically make dst the same content as src."""
    with atomic_output(dst) as tmp:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def load_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}. Checkpoints are OUTPUT_DIR/checkpoints/checkpoint_*.pt "
                        "(training also takes --resume auto: the newest there).")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, wrong format, pickled code: all unusable the same way
        refused = str(err).partition("WeightsUnpickler error: ")[2]
        if refused:  # torch's own advice (weights_only=False) would run whatever the file holds
            raise UserError(
                f"checkpoint {path} cannot be loaded: it holds pickled Python objects "
                f"({refused.split(' was not an allowed', 1)[0].splitlines()[0][:200]}) that could run code when loaded. "
                "Checkpoints of this toolkit hold only tensors and plain values: use a checkpoint_step_N.pt "
                "written by train_smolvla_sim.py."
            ) from None
        raise UserError(
            f"checkpoint {path} cannot be loaded ({type(err).__name__}: {str(err).splitlines()[0][:200]}). It is "
            "damaged or not one of ours; use an older checkpoint_step_N.pt from the same folder."
        ) from None
    if not isinstance(state, dict) or "step" not in state or "model" not in state:
        raise UserError(f"{path} is not a training checkpoint of this toolkit (no 'step'/'model' entries). Pass a "
                        "checkpoint_step_N.pt or checkpoint_latest.pt from OUTPUT_DIR/checkpoints.")
    return state


def step_checkpoints(ckpt_dir) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint_step_N.pt, oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := STEP_FILE.match(p.name))]
    return sorted(found)


def find_resume_checkpoint(ckpt_dir) -> Path | None:
    """`--resume auto`: the newest step checkpoint (complete by construction), or None for a fresh start.

    The step files, not checkpoint_latest.pt, decide: a kill between writing a step file and relinking
    latest leaves latest one save behind.
    """
    ckpts = step_checkpoints(ckpt_dir)
    if ckpts:
        return ckpts[-1][1]
    latest = Path(ckpt_dir) / LATEST
    return latest if latest.is_file() else None


def prune_checkpoints(ckpt_dir, keep_last: int | None):
    """Delete all but the newest `keep_last` step checkpoints (checkpoint_best.pt is never touched)."""
    if keep_last is None:
        return
    for _, path in step_checkpoints(ckpt_dir)[:-keep_last]:
        path.unlink(missing_ok=True)


def restore_policy(ckpt: dict, device="cpu"):
    """The checkpoint's policy and processors, rebuilt from its own config and stats -> (policy, pre, post).

    Every weight comes from the checkpoint, so nothing is downloaded: only the VLM's config/tokenizer at
    policy.vlm_model_name must be reachable, as when training.
    """
    from insertion_vla.policy import build_policy  # lerobot is heavy; only callers that rebuild a policy pay for it

    cfg = ckpt["config"]
    policy_cfg = {**cfg["policy"], "pretrained_model_id": None, "load_vlm_weights": False}
    policy, preprocessor, postprocessor = build_policy(
        policy_cfg, state_dim=ckpt["state_dim"], action_dim=ckpt["action_dim"], camera_keys=ckpt["camera_keys"],
        stats=ckpt["stats"], normalization_mode=cfg["normalization"]["mode"], device=device, warn_random_vlm=False,
    )
    policy.load_state_dict(ckpt["model"])
    policy.eval()
    return policy, preprocessor, postprocessor
