"""insertion_vla.export: the exported folder loads in a fresh process with lerobot alone, offline."""

import json
import os
import shutil
import subprocess
import sys

import torch
from fixtures_policy import CAMERA_KEYS, TASK, make_policy_cfg, make_raw_batch, make_stats, tiny_vlm_dir  # noqa: F401
from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

from insertion_vla.export import export_pretrained, repoint_export
from insertion_vla.policy import build_policy, predict_action_chunk, prepare_batch

STATE_DIM, ACTION_DIM, CHUNK = 6, 6, 50
ACTION_MEAN = 100.0  # far from anything the normalized model outputs: the prediction must be denormalized

# What a robot program does with lerobot alone: load the folder, feed one raw frame (uint8 camera images as float
# [0, 1], the state in its own units, the instruction), get a chunk of joint commands.
LEROBOT_ONLY_LOADER = """
import sys
from pathlib import Path
import torch
from lerobot.policies.factory import make_pre_post_processors
from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

export_dir, frame_file, out_file, moved = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] == "moved"
if moved:  # the documented lerobot-only way to load a folder moved after export
    vlm = str(export_dir / "vlm")
    policy = SmolVLAPolicy.from_pretrained(export_dir, cli_overrides=[f"--vlm_model_name={vlm}"])
    preprocessor, postprocessor = make_pre_post_processors(
        policy.config, pretrained_path=str(export_dir),
        preprocessor_overrides={"tokenizer_processor": {"tokenizer_name": vlm}})
else:
    policy = SmolVLAPolicy.from_pretrained(export_dir)
    preprocessor, postprocessor = make_pre_post_processors(policy.config, pretrained_path=str(export_dir))
frame = torch.load(frame_file, weights_only=True)
observation = {key: image.float() / 255 for key, image in frame["images"].items()}
observation["observation.state"] = frame["state"]
observation["task"] = frame["task"]
chunk = postprocessor(policy.predict_action_chunk(preprocessor(observation), noise=frame["noise"]))
assert not any(name.startswith("insertion_vla") for name in sys.modules), "loaded code of ours"
torch.save(chunk, out_file)
"""


def export_tiny_policy(vlm_dir, out_dir):
    torch.manual_seed(0)
    policy, pre, post = build_policy(
        make_policy_cfg(vlm_dir), state_dim=STATE_DIM, action_dim=ACTION_DIM, camera_keys=CAMERA_KEYS,
        stats=make_stats(STATE_DIM, ACTION_DIM, action_mean=ACTION_MEAN, action_std=0.5), device="cpu",
    )
    export_pretrained(policy, pre, post, out_dir)
    return policy, pre, post


def predict_in_fresh_process(export_dir, frame, tmp_path, moved=False):
    torch.save(frame, tmp_path / "frame.pt")
    elsewhere = tmp_path / "robot_cwd"
    elsewhere.mkdir(exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty_hf_home")}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-c", LEROBOT_ONLY_LOADER, str(export_dir), str(tmp_path / "frame.pt"),
         str(tmp_path / "chunk.pt"), "moved" if moved else "in_place"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(tmp_path / "chunk.pt", weights_only=True)


def raw_frame(seed=0):
    batch = make_raw_batch(1, STATE_DIM, ACTION_DIM, horizon=CHUNK, seed=seed)
    return {
        "images": {key: batch[key][0] for key in CAMERA_KEYS},
        "state": batch["observation.state"][0],
        "task": TASK,
        "noise": torch.randn(1, CHUNK, 32, generator=torch.Generator().manual_seed(seed)),
    }


def in_process_prediction(policy, pre, post, frame):
    batch = {key: image[None] for key, image in frame["images"].items()}
    batch["observation.state"] = frame["state"][None]
    batch["task"] = [frame["task"]]
    return predict_action_chunk(policy, prepare_batch(batch, pre, "cpu"), post, noise=frame["noise"])


def test_export_loads_offline_with_lerobot_alone_and_predicts_joint_units(tiny_vlm_dir, tmp_path):
    out_dir = tmp_path / "train" / "final_hf"
    policy, pre, post = export_tiny_policy(tiny_vlm_dir, out_dir)

    config = json.loads((out_dir / "config.json").read_text())
    assert config["vlm_model_name"] == str(out_dir / "vlm") and config["load_vlm_weights"] is False
    assert {"config.json", "tokenizer.json", "processor_config.json"} <= set(os.listdir(out_dir / "vlm"))
    assert not list(tmp_path.glob("train/*.tmp-*"))

    frame = raw_frame()
    chunk = predict_in_fresh_process(out_dir, frame, tmp_path)
    assert chunk.shape == (1, CHUNK, ACTION_DIM)
    # Joint units: around the action mean of the stats (100 + 0.1 * dim, std 0.5), not the normalized ~0...
    assert ((chunk - ACTION_MEAN).abs() < 10).all()
    # ...and the same numbers as the training-side model gives for that frame (weights, stats, tokenizer all kept).
    torch.testing.assert_close(chunk, in_process_prediction(policy, pre, post, frame), rtol=1e-5, atol=1e-4)


def test_moved_export_loads_with_overrides_or_after_repointing(tiny_vlm_dir, tmp_path):
    export_tiny_policy(tiny_vlm_dir, tmp_path / "train" / "final_hf")
    moved = tmp_path / "robot" / "policy"
    moved.parent.mkdir()
    shutil.move(tmp_path / "train" / "final_hf", moved)  # the old location no longer exists

    frame = raw_frame(seed=1)
    chunk = predict_in_fresh_process(moved, frame, tmp_path, moved=True)
    assert chunk.shape == (1, CHUNK, ACTION_DIM)

    repoint_export(moved)
    assert json.loads((moved / "config.json").read_text())["vlm_model_name"] == str(moved / "vlm")
    policy = SmolVLAPolicy.from_pretrained(moved)  # plain loading works again
    assert policy.config.vlm_model_name == str(moved / "vlm")


def test_export_replaces_an_existing_folder(tiny_vlm_dir, tmp_path):
    out_dir = tmp_path / "final_hf"
    out_dir.mkdir()
    (out_dir / "stale.txt").write_text("from an older export")
    export_tiny_policy(tiny_vlm_dir, out_dir)
    assert not (out_dir / "stale.txt").exists()
    assert (out_dir / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final_hf"]
