"""Shared pieces of the policy / export tests: a tiny offline VLM, a policy config, stats and raw batches.

Imported by the test modules (`from fixtures_policy import ...`); pytest puts tests/ on sys.path.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no Hub in tests: fail fast instead of retrying the network

import numpy as np
import pytest
import torch

from insertion_vla.tiny_vlm import build_tiny_vlm

CAMERA_KEYS = [f"observation.images.camera{i}" for i in (1, 2, 3)]
TASK = "Insert needle into eye trocar in simulation"
IMAGE_SIDE = 64  # a multiple of the tiny VLM's patch_size x scale_factor (32)


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory):
    return build_tiny_vlm(tmp_path_factory.mktemp("vlm") / "tiny_vlm")


def make_policy_cfg(vlm_dir, **overrides) -> dict:
    cfg = dict(
        vlm_model_name=str(vlm_dir), pretrained_model_id=None, load_vlm_weights=False, n_obs_steps=1,
        chunk_size=50, n_action_steps=50, max_state_dim=32, max_action_dim=32, num_steps=4,
        resize_imgs_with_padding=[IMAGE_SIDE, IMAGE_SIDE], tokenizer_max_length=48, freeze_vision_encoder=True,
        train_expert_only=True, train_state_proj=True, num_vlm_layers=16,
    )
    cfg.update(overrides)
    return cfg


def make_stats(state_dim: int, action_dim: int, action_mean: float = 0.0, action_std: float = 1.0) -> dict:
    """Stats in our format (stats.py): arrays per key, plus count."""
    def entry(dim, mean, std):
        mean = np.full(dim, mean, dtype=np.float32) + np.arange(dim, dtype=np.float32) * 0.1
        std = np.full(dim, std, dtype=np.float32)
        return {"mean": mean, "std": std, "min": mean - 3 * std, "max": mean + 3 * std,
                "q01": mean - 2 * std, "q99": mean + 2 * std, "count": 1000}
    return {"observation.state": entry(state_dim, 0.5, 0.2), "action": entry(action_dim, action_mean, action_std)}


def make_raw_batch(batch_size: int, state_dim: int, action_dim: int, horizon: int, seed: int = 0) -> dict:
    """A batch as the dataset's DataLoader yields it (uint8 images, joint-unit actions, pad mask, task)."""
    g = torch.Generator().manual_seed(seed)
    batch = {key: torch.randint(0, 256, (batch_size, 3, IMAGE_SIDE, IMAGE_SIDE), dtype=torch.uint8, generator=g)
             for key in CAMERA_KEYS}
    batch["observation.state"] = torch.randn(batch_size, state_dim, generator=g)
    batch["action"] = torch.randn(batch_size, horizon, action_dim, generator=g)
    batch["action_is_pad"] = torch.zeros(batch_size, horizon, dtype=torch.bool)
    batch["task"] = [TASK] * batch_size
    batch["episode_index"] = torch.arange(batch_size, dtype=torch.int64)
    batch["frame_index"] = torch.arange(batch_size, dtype=torch.int64) * 7
    return batch
