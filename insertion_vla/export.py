"""Self-contained export of a trained policy in lerobot's own layout, loadable offline with lerobot alone.

    OUT_DIR/
      config.json, model.safetensors                 SmolVLAPolicy.save_pretrained
      policy_preprocessor.json + *.safetensors       lerobot's processor pipelines, with our normalization stats
      policy_postprocessor.json + *.safetensors
      vlm/                                           the VLM's config, tokenizer and processor (no weights: the
                                                     VLM's trained weights are in model.safetensors); the
                                                     localizers of dataset.placement_estimate, if it is set
      training_config.yaml                           the run's config: how the policy saw the data (cameras, state,
                                                     task, placement estimate), for our evaluator and robot runner

config.json names `vlm/` as `vlm_model_name` with `load_vlm_weights: false`, and the preprocessor's tokenizer step
names it as `tokenizer_name`, so loading builds the VLM from these files and downloads nothing:

    policy = SmolVLAPolicy.from_pretrained(OUT_DIR)
    preprocessor, postprocessor = make_pre_post_processors(policy.config, pretrained_path=OUT_DIR)

lerobot hands both names to transformers' from_pretrained unchanged, which resolves a relative path against the
current directory, not against OUT_DIR; so they are written as absolute paths. After moving the folder (e.g. to a
robot computer) either rewrite them once with repoint_export(NEW_DIR), or load with two overrides, lerobot only
(evaluation.policy_io reads training_config.yaml with its placement estimate pointed at the folder's own vlm/):

    d = Path(NEW_DIR).resolve()
    policy = SmolVLAPolicy.from_pretrained(d, cli_overrides=[f"--vlm_model_name={d / 'vlm'}"])
    preprocessor, postprocessor = make_pre_post_processors(
        policy.config, pretrained_path=str(d),
        preprocessor_overrides={"tokenizer_processor": {"tokenizer_name": str(d / "vlm")}})
"""

import argparse
import copy
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import yaml
from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

from episode_format.atomic import atomic_write_text
from insertion_vla.checkpoint import load_checkpoint, restore_policy
from insertion_vla.config import save_config
from insertion_vla.errors import exit_on_user_error
from insertion_vla.localizer import LOCALIZER_FILE, NEAR_LOCALIZER_FILE

VLM_SUBDIR = "vlm"
PREPROCESSOR_FILE = "policy_preprocessor.json"
TOKENIZER_STEP = "tokenizer_processor"
DEVICE_STEP = "device_processor"
TRAINING_CONFIG_FILE = "training_config.yaml"


def export_pretrained(
    policy: SmolVLAPolicy, preprocessor, postprocessor, out_dir: str | os.PathLike, *, device: str | None = None,
    train_cfg: dict | None = None,
) -> Path:
    """Write `policy` and its processors (with their stats) to `out_dir` in lerobot's layout; return its path.

    device: the device the exported config and preprocessor name (default: the policy's). lerobot refuses to
    load a "cuda" preprocessor on a machine without CUDA: export with device="cpu" for such a robot computer.
    train_cfg: the run's config, kept as training_config.yaml; the localizers its dataset.placement_estimate names
    are copied into vlm/, and the kept config names that folder instead.
    Written atomically: built in `<out_dir>.tmp-<pid>`, then renamed over any existing `out_dir`.
    """
    out_dir = Path(out_dir).resolve()
    tmp_dir = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    vlm_dir = out_dir / VLM_SUBDIR  # where the files will be once renamed; the saved paths name this

    try:
        vlm = policy.model.vlm_with_expert
        vlm.config.save_pretrained(tmp_dir / VLM_SUBDIR)
        vlm.processor.save_pretrained(tmp_dir / VLM_SUBDIR)  # tokenizer, image and video processor

        device = device or policy.config.device
        policy.save_pretrained(tmp_dir)  # model.safetensors (+ a config.json replaced below)
        exported_config = replace(
            policy.config, vlm_model_name=str(vlm_dir), load_vlm_weights=False, pretrained_path=None, device=device
        )
        exported_config.save_pretrained(tmp_dir)
        preprocessor.save_pretrained(tmp_dir)
        postprocessor.save_pretrained(tmp_dir)
        _set_step_config(tmp_dir / PREPROCESSOR_FILE, TOKENIZER_STEP, tokenizer_name=str(vlm_dir))
        _set_step_config(tmp_dir / PREPROCESSOR_FILE, DEVICE_STEP, device=device)
        if train_cfg is not None:
            _keep_training_config(train_cfg, tmp_dir, vlm_dir)
        _fsync_tree(tmp_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)  # never leave a half-written export behind
        raise
    _replace_dir(tmp_dir, out_dir)
    return out_dir


def _keep_training_config(train_cfg: dict, tmp_dir: Path, vlm_dir: Path) -> None:
    """training_config.yaml in tmp_dir; with a placement estimate, its localizers go along into vlm/."""
    cfg = copy.deepcopy(train_cfg)
    localizers = cfg["dataset"].get("placement_estimate")
    if localizers:
        for name in (LOCALIZER_FILE, NEAR_LOCALIZER_FILE):
            if (Path(localizers) / name).is_file():  # a missing one is the estimator's error to report, on loading
                shutil.copy2(Path(localizers) / name, tmp_dir / VLM_SUBDIR / name)
        cfg["dataset"]["placement_estimate"] = str(vlm_dir)
    save_config(cfg, tmp_dir / TRAINING_CONFIG_FILE)


def repoint_export(export_dir: str | os.PathLike) -> Path:
    """Point a moved export's config, tokenizer step and placement estimate at its own `vlm/` again."""
    export_dir = Path(export_dir).resolve()
    vlm_dir = str(export_dir / VLM_SUBDIR)
    config_path = export_dir / "config.json"
    config = json.loads(config_path.read_text())
    config["vlm_model_name"] = vlm_dir
    _write_json(config_path, config)
    _set_step_config(export_dir / PREPROCESSOR_FILE, TOKENIZER_STEP, tokenizer_name=vlm_dir)
    training_config = export_dir / TRAINING_CONFIG_FILE
    if training_config.is_file():
        cfg = yaml.safe_load(training_config.read_text())
        if cfg["dataset"].get("placement_estimate"):
            cfg["dataset"]["placement_estimate"] = vlm_dir
            save_config(cfg, training_config)
    return export_dir


def _set_step_config(pipeline_path: Path, registry_name: str, **values) -> None:
    """Set config values of the one step named `registry_name` in a saved lerobot processor pipeline."""
    pipeline = json.loads(pipeline_path.read_text())
    steps = [step for step in pipeline["steps"] if step.get("registry_name") == registry_name]
    if len(steps) != 1:
        raise ValueError(f"{pipeline_path} has {len(steps)} '{registry_name}' steps, expected exactly one")
    steps[0]["config"].update(values)
    _write_json(pipeline_path, pipeline)


def _write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2))


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename src to dst; an existing dst is moved aside first and deleted after (directories can't be
    os.replace'd over a non-empty one)."""
    old = dst.with_name(f"{dst.name}.old-{os.getpid()}")
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)
    dir_fd = os.open(dst.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m insertion_vla.export",
        description="Export a training checkpoint as a self-contained lerobot policy folder (like final_hf/).",
    )
    parser.add_argument("checkpoint", help="a checkpoint_*.pt written by train_smolvla_sim.py")
    parser.add_argument("out_dir", help="folder to write (replaced atomically if it exists)")
    parser.add_argument("--device", default="cpu",
                        help="device named in the exported config and preprocessor (default: %(default)s, loads anywhere)")
    args = parser.parse_args(argv)
    ckpt = load_checkpoint(args.checkpoint)
    policy, preprocessor, postprocessor = restore_policy(ckpt)
    out = export_pretrained(policy, preprocessor, postprocessor, args.out_dir, device=args.device,
                            train_cfg=ckpt["config"])
    print(f"Exported step {ckpt['step']} of {args.checkpoint} to {out}")


if __name__ == "__main__":
    exit_on_user_error(main)
