"""The policy under evaluation and what it expects to see.

Loading: an exported `final_hf/` (lerobot's own loading) or a training `checkpoint_*.pt`, with the training config
that says how the policy saw the data. Input: a simulator observation turned into the batch the training data
loader would have built from the same frame recorded by sim/ (camera -> lerobot key, JPEG round trip at the
collector's quality, resize with padding, the same state and task instruction; with dataset.placement_estimate the
state ends with the placement estimate from the episode's observations so far, as from its recorded frames:
insertion_vla.localizer).
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from episode_format.jpeg import DEFAULT_JPEG_QUALITY, as_recorded
from insertion_vla.checkpoint import load_checkpoint, restore_policy
from insertion_vla.config import defaults, load_config
from insertion_vla.dataset import resize_with_pad
from insertion_vla.episodes import keys_from_config
from insertion_vla.errors import UserError
from insertion_vla.export import TRAINING_CONFIG_FILE, VLM_SUBDIR
from insertion_vla.localizer import ESTIMATE_NAMES, EpisodeEstimate, estimator_from_config
from sim.recorder import TASK_INSTRUCTION
from sim.scene import CAMERA_NAMES

SIM_STATE = {"observations/ee_pose": "ee_pose", "observations/qpos": "qpos"}  # HDF5 path -> env observation key


@dataclass(frozen=True)
class PolicyInputs:
    """How a simulator observation becomes the policy's input, as the training data loader built it."""

    cameras: dict  # simulator camera -> lerobot image key, e.g. {"side_camera": "observation.images.camera1"}
    state: tuple  # observation keys concatenated into the state, e.g. ("ee_pose",)
    task: str
    image_side: int  # policy.resize_imgs_with_padding (square)
    jpeg_quality: int  # JPEG round trip as the collector stores frames; 0: none
    estimator: object = None  # insertion_vla.localizer's PlacementEstimator or TruePlacement (dataset.placement_estimate
    # or true_placement), or None


@dataclass
class LoadedPolicy:
    policy: object
    preprocessor: object
    postprocessor: object
    train_cfg: dict  # the training config (its dataset section says how the policy saw the data)
    config_source: str  # where train_cfg came from, for the report


def load_policy(path, device: str, config_path=None) -> LoadedPolicy:
    """A `final_hf/` export (lerobot's own loading) or a training `checkpoint_*.pt` (restore_policy), with the
    training config that says how it saw the data: `config_path`, else the checkpoint's own or the run's."""
    path = Path(path)
    if path.is_file() and path.suffix == ".pt":
        ckpt = load_checkpoint(path)
        policy, pre, post = restore_policy(ckpt, device=device)
        train_cfg, source = ckpt["config"], f"{path} (the checkpoint's own)"
    elif path.is_dir() and (path / "config.json").is_file():
        policy, pre, post = load_export(path, device)
        train_cfg, source = (None, None) if config_path else training_config_of_export(path)
    else:
        raise UserError(
            f"--policy {path}: not found, or neither a checkpoint_*.pt file nor an exported policy folder (a final_hf/ "
            "with config.json and model.safetensors). Training writes both under OUTPUT_DIR/checkpoints/."
        )
    if config_path is not None:
        train_cfg, source = load_config(config_path), str(config_path)
    return LoadedPolicy(policy, pre, post, train_cfg, source)


def load_export(path: Path, device: str):
    """lerobot's loading of an export, pointed at the folder's own vlm/ (so a moved folder loads too)."""
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    path = path.resolve()
    vlm = str(path / VLM_SUBDIR)
    policy = SmolVLAPolicy.from_pretrained(path, cli_overrides=[f"--vlm_model_name={vlm}", f"--device={device}"])
    preprocessor, postprocessor = make_pre_post_processors(
        policy.config, pretrained_path=str(path),
        preprocessor_overrides={"tokenizer_processor": {"tokenizer_name": vlm}, "device_processor": {"device": device}},
    )
    return policy, preprocessor, postprocessor


def training_config_of_export(export_dir: Path) -> tuple[dict, str]:
    """The export's own training_config.yaml, its placement estimate from the export's vlm/ wherever the folder is
    now; else (an export from before it was kept) the run's config.yaml (OUTPUT_DIR/checkpoints/final_hf ->
    OUTPUT_DIR/config.yaml); else the defaults (the simulator's cameras and the ee_pose state)."""
    export_dir = export_dir.resolve()
    kept = export_dir / TRAINING_CONFIG_FILE
    if kept.is_file():
        cfg = load_config(kept)
        if cfg["dataset"]["placement_estimate"]:
            cfg["dataset"]["placement_estimate"] = str(export_dir / VLM_SUBDIR)
        return cfg, str(kept)
    run_config = export_dir.parent.parent / "config.yaml"
    if run_config.is_file():
        return load_config(run_config), str(run_config)
    print(f"note: no training config in {export_dir} or next to it ({run_config} is missing) and no --config: "
          "assuming the default inputs (dataset.cameras, ee_pose state, task instruction of insertion_vla.config)")
    return defaults(), "defaults"


SIM_CAMERA_ADVICE = ("pass --config with a config whose dataset.cameras maps simulator cameras to the policy's keys "
                     "(e.g. side_camera: camera1)")


def policy_inputs(policy, dataset_cfg: dict, jpeg_quality: int = DEFAULT_JPEG_QUALITY,
                  available_cameras: tuple = CAMERA_NAMES, source: str = "the simulator",
                  camera_advice: str = SIM_CAMERA_ADVICE) -> PolicyInputs:
    """The policy's inputs in simulator terms, checked against what `source` (the simulator, or a robot with its
    `available_cameras` and the advice for it) provides."""
    keys = keys_from_config(dataset_cfg)
    cameras = {camera: f"observation.images.{name}" for camera, name in keys.cameras.items()}
    missing = sorted(set(cameras) - set(available_cameras))
    if missing:
        raise UserError(f"the policy sees cameras {sorted(cameras)} (dataset.cameras of its training config), but "
                        f"{source} has {list(available_cameras)}: {missing} missing. To fix: {camera_advice}.")
    expected = sorted(policy.config.image_features)
    if sorted(cameras.values()) != expected:
        raise UserError(
            f"the policy's image inputs are {expected}, but its config maps the cameras to {sorted(cameras.values())} "
            "(dataset.cameras): pass --config with the config the policy was trained with."
        )
    missing = [key for key in keys.state_keys if key not in SIM_STATE]
    if missing:
        raise UserError(f"the policy's state comes from {missing}, which the simulator does not provide "
                        f"(it has {list(SIM_STATE)}); set dataset.use_ee_pose / use_qpos / state_key accordingly")
    state = tuple(SIM_STATE[key] for key in keys.state_keys)
    estimator = estimator_from_config(dataset_cfg)
    given = 6 * len(state) + (len(ESTIMATE_NAMES) if estimator is not None else 0)
    state_dim = policy.config.robot_state_feature.shape[0]
    if state_dim != given:
        raise UserError(f"the policy expects a state of {state_dim} values, but {list(keys.state_keys)}"
                        f"{' and the placement' if estimator is not None else ''} give {given}: pass "
                        "--config with the config the policy was trained with")
    action_dim = policy.config.action_feature.shape[0]
    if action_dim != 6:
        raise UserError(f"the policy outputs {action_dim} action values; the simulator takes 6 joint positions")
    return PolicyInputs(
        cameras=cameras, state=state, task=dataset_cfg["task_instruction"] or TASK_INSTRUCTION,
        image_side=policy.config.resize_imgs_with_padding[0], jpeg_quality=jpeg_quality, estimator=estimator,
    )


def placement_estimate(observation: dict, inputs: PolicyInputs, tracker: EpisodeEstimate) -> np.ndarray:
    """The episode's placement estimate at this observation (tracker: inputs.estimator's, for this episode), from
    its frames after the recorder's JPEG round trip, as training made it from the recorded frames."""
    return tracker.update(observation["ee_pose"], lambda cameras: {
        camera: as_recorded(observation["images"][camera], inputs.jpeg_quality) for camera in cameras})


def observation_batch(observation: dict, inputs: PolicyInputs, estimate: np.ndarray | None = None) -> dict:
    """One simulator observation as a dataset batch of one (uint8 images, state, task), for prepare_batch;
    `estimate`: the episode's placement estimate, appended to the state (inputs.estimator's)."""
    batch = {}
    for camera, key in inputs.cameras.items():
        image = resize_with_pad(as_recorded(observation["images"][camera], inputs.jpeg_quality), inputs.image_side,
                                inputs.image_side)
        batch[key] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).unsqueeze(0)
    parts = [observation[name] for name in inputs.state] + ([estimate] if estimate is not None else [])
    batch["observation.state"] = torch.from_numpy(np.concatenate(parts).astype(np.float32)).unsqueeze(0)
    batch["task"] = [inputs.task]
    return batch
