"""What the policy's training episodes tell evaluation: the base seeds they were collected with (evaluation must
not replay them), their image size (evaluation renders the same) and the phantom placement range they were
collected with (evaluation during training draws from the same)."""

import contextlib
from pathlib import Path

import h5py

from episode_format.reader import discover_episodes, open_episode
from insertion_vla.episodes import keys_from_config
from insertion_vla.errors import UserError
from sim.randomization import PhantomPlacement

DEFAULT_SIZE = (640, 480)  # the collector's default image size


def training_data_facts(dataset_cfg: dict) -> dict | None:
    """Base seeds and image size of a config's training episodes; None when its folder is not reachable here."""
    root = Path(dataset_cfg["root_dir"])
    if not root.is_dir():
        return None
    paths = discover_episodes(root, source="dataset.root_dir of the policy's training config (--config names another)")
    base_seeds, placements = set(), set()
    for path in paths:
        with contextlib.suppress(OSError), h5py.File(path, "r") as f:  # a damaged file is training's to report
            if "base_seed" in f.attrs:
                base_seeds.add(int(f.attrs["base_seed"]))
            placements.add(PhantomPlacement.from_attrs(f.attrs))
    keys = keys_from_config(dataset_cfg)
    camera = next(iter(keys.cameras))
    with open_episode(paths[0], keys) as episode:
        height, width = episode.read_image(camera, 0).shape[:2]
    # one placement range shared by every file; otherwise (mixed, or files from before it was recorded) the default
    placement = placements.pop() if len(placements) == 1 and None not in placements else PhantomPlacement()
    return {"root": str(root), "episodes": len(paths), "base_seeds": sorted(base_seeds), "image_size": (width, height),
            "phantom": placement}


def check_seeds_disjoint(base_seed: int, facts: dict | None) -> str:
    """Refuse an evaluation base seed that the training episodes were collected with; a note for the report."""
    if facts is None:
        return "not checked: the training episodes are not reachable from here"
    if base_seed in facts["base_seeds"]:
        raise UserError(
            f"--seed {base_seed}: the training episodes in {facts['root']} were collected with base seed {base_seed}, "
            f"so evaluation would replay training scenes. Choose another --seed (their base seeds: {facts['base_seeds']})."
        )
    if not facts["base_seeds"]:
        return f"nothing to check: the training episodes in {facts['root']} have no base_seed (not simulator collections)"
    return f"checked: the training episodes in {facts['root']} have base seeds {facts['base_seeds']}"
