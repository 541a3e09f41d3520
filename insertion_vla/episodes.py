"""Which parts of an episode file the training config selects (the format itself: episode_format)."""

from episode_format import EE_POSE_KEY, QPOS_KEY
from episode_format.reader import EpisodeKeys
from insertion_vla.errors import UserError


def keys_from_config(dataset_cfg: dict) -> EpisodeKeys:
    """The config's dataset section -> EpisodeKeys (state_key wins; else use_ee_pose, use_qpos, ee_pose first)."""
    if dataset_cfg["state_key"]:
        state_keys = (dataset_cfg["state_key"],)
    else:
        state_keys = tuple(
            key for flag, key in (("use_ee_pose", EE_POSE_KEY), ("use_qpos", QPOS_KEY)) if dataset_cfg[flag]
        )
    if not state_keys:
        raise UserError("dataset.use_ee_pose and dataset.use_qpos are both false: set one, or dataset.state_key.")
    return EpisodeKeys(cameras=dict(dataset_cfg["cameras"]), state_keys=state_keys, action_key=dataset_cfg["action_key"])
