"""Statistics of state and action over all episodes: one streaming pass, YAML read/write.

Mean and std are merged episode by episode in float64 (Chan et al.'s parallel update of Welford's M2), so
no image and no second pass is needed. Quantiles are exact (numpy's default linear definition), which needs
the low-dimensional values themselves: about 50 MB for a million frames, never an image.
"""

from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from episode_format.atomic import atomic_write_text
from episode_format.errors import EpisodeFormatError
from episode_format.reader import EpisodeKeys, open_episode
from insertion_vla.errors import UserError

FEATURES = ("observation.state", "action")
STAT_NAMES = ("mean", "std", "min", "max", "q01", "q99")
MAKE_STATS_HINT = "bash compute_dataset_stats_sim.sh (or: python compute_dataset_stats.py --dataset_root DIR --output FILE)"
# A dimension whose std is below this (in the data's units, m or rad: 0.1 mm, 0.006 deg) is constant for this task.
# On the fixed tier the state's x, ry, rz differ only by float32 round-off (std ~1e-9) and the expert never turns
# joint 6; lerobot's (x - mean) / (std + 1e-8) would feed that round-off to the policy as features of order 0.1-1.
# Training normalizes such a dimension with this std instead (floor_constant_dims), which maps it to ~0.
CONSTANT_STD = 1e-4


class RunningStats:
    """Count, mean, M2, min and max of (N, D) rows, merged chunk by chunk; values kept for exact quantiles."""

    def __init__(self):
        self.count = 0
        self._chunks = []

    def update(self, rows: np.ndarray):
        rows = np.asarray(rows, dtype=np.float64)
        n, mean = len(rows), rows.mean(axis=0)
        m2 = ((rows - mean) ** 2).sum(axis=0)
        if self.count == 0:
            self.mean, self.m2 = mean, m2
            self.min, self.max = rows.min(axis=0), rows.max(axis=0)
        else:
            total = self.count + n
            delta = mean - self.mean
            self.mean = self.mean + delta * n / total
            self.m2 = self.m2 + m2 + delta**2 * self.count * n / total
            self.min, self.max = np.minimum(self.min, rows.min(axis=0)), np.maximum(self.max, rows.max(axis=0))
        self.count += n
        self._chunks.append(rows.astype(np.float32))  # the files hold float32: nothing is lost

    def result(self) -> dict:
        values = np.concatenate(self._chunks).astype(np.float64)
        q01, q99 = np.quantile(values, [0.01, 0.99], axis=0)
        return {
            "mean": self.mean, "std": np.sqrt(self.m2 / self.count), "min": self.min, "max": self.max,
            "q01": q01, "q99": q99, "count": self.count,
        }


def compute_stats(paths, keys: EpisodeKeys, *, skip_bad: bool = False, progress: bool = True, estimator=None):
    """-> (stats, skipped): stats keyed by feature; skipped = [(path, reason)] of bad files (skip_bad only).

    Without skip_bad, every bad file is listed in one error, so one run tells the user all that is wrong.
    estimator: an insertion_vla.localizer.PlacementEstimator (or TruePlacement) whose estimate at each frame is part
    of its state row, as training builds it (dataset.placement_estimate, true_placement); None: the recorded state
    alone.
    """
    state, action = RunningStats(), RunningStats()
    bad, dims = [], {}
    for path in tqdm(paths, desc="episodes", unit="ep", disable=not progress):
        try:
            with open_episode(path, keys) as ep:
                ep_dims = (ep.state.shape[1], ep.action.shape[1])
                if dims and ep_dims not in dims:
                    raise EpisodeFormatError(
                        f"{path}: state dim {ep_dims[0]}, action dim {ep_dims[1]}, but {next(iter(dims.values()))} "
                        f"has {next(iter(dims))}. Episodes of one dataset must share dimensions."
                    )
                dims.setdefault(ep_dims, path)
                if estimator is None:
                    state.update(ep.state)
                else:
                    state.update(np.hstack([ep.state, estimator.episode_estimates(ep)]))
                action.update(ep.action)
        except EpisodeFormatError as err:
            bad.append((Path(path), str(err)))
    if bad and not skip_bad:
        listing = "\n  ".join(reason for _, reason in bad)
        raise UserError(
            f"{len(bad)} of {len(paths)} episode files are bad:\n  {listing}\n"
            "Fix or remove them, or pass --skip_bad to compute the statistics without them."
        )
    if state.count == 0:
        raise UserError(f"no usable episode among the {len(paths)} files: nothing to compute statistics from.")
    return {"observation.state": state.result(), "action": action.result()}, bad


def save_stats(stats: dict, path, source: dict | None = None):
    """YAML keyed observation.state / action, values at full float precision; written atomically."""
    doc = {
        feature: {name: (value.tolist() if isinstance(value, np.ndarray) else value) for name, value in s.items()}
        for feature, s in stats.items()
    }
    if source:
        doc["source"] = source
    atomic_write_text(path, yaml.safe_dump(doc, sort_keys=False))


def load_stats(path) -> dict:
    """The stats file -> {feature: {stat: np.ndarray, "count": int}}, with a clear error when it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found: the statistics file is made by `{MAKE_STATS_HINT}`.")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{path} is not valid YAML ({err}). Recreate it with `{MAKE_STATS_HINT}`.") from None
    stats = {}
    for feature in FEATURES:
        entry = doc.get(feature) if isinstance(doc, dict) else None
        missing = [n for n in STAT_NAMES if not isinstance(entry, dict) or n not in entry]
        if missing:
            raise UserError(f"{path}: '{feature}' lacks {', '.join(missing)}. Recreate it with `{MAKE_STATS_HINT}`.")
        stats[feature] = {n: np.asarray(entry[n], dtype=np.float32) for n in STAT_NAMES}
        stats[feature]["count"] = int(entry.get("count", 0))
    return stats


def near_constant_dims(stats: dict) -> list[tuple[str, int, float]]:
    """(feature, dimension, std) of every dimension with std below CONSTANT_STD."""
    return [(feature, int(dim), float(stats[feature]["std"][dim])) for feature in FEATURES
            for dim in np.flatnonzero(np.asarray(stats[feature]["std"]) < CONSTANT_STD)]


def floor_constant_dims(stats: dict) -> dict:
    """A copy in which near-constant dimensions normalize to a constant: std raised to CONSTANT_STD and the
    min..max (and q01..q99) range widened to at least mean -/+ CONSTANT_STD, so MEAN_STD and MIN_MAX alike map the
    round-off to ~0 instead of amplifying it. Other dimensions are unchanged."""
    floored = {}
    for feature, entry in stats.items():
        entry = dict(entry)
        if feature in FEATURES and "mean" in entry and "std" in entry:
            mean = np.asarray(entry["mean"])
            entry["std"] = np.maximum(entry["std"], CONSTANT_STD).astype(np.asarray(entry["std"]).dtype)
            for low, high in (("min", "max"), ("q01", "q99")):
                if low in entry:
                    entry[low] = np.minimum(entry[low], mean - CONSTANT_STD).astype(np.asarray(entry[low]).dtype)
                    entry[high] = np.maximum(entry[high], mean + CONSTANT_STD).astype(np.asarray(entry[high]).dtype)
        floored[feature] = entry
    return floored


def check_stats_match(stats: dict, state_dim: int, action_dim: int, stats_path):
    """Refuse stats of another dataset layout (e.g. 3-dim ee_pose stats for 6-dim data)."""
    for feature, dim in (("observation.state", state_dim), ("action", action_dim)):
        have = len(stats[feature]["mean"])
        if have != dim:
            raise UserError(
                f"{stats_path}: '{feature}' statistics have {have} dims but the data has {dim}. The file was made "
                f"for another dataset or state layout: recreate it with `{MAKE_STATS_HINT}`."
            )
