"""Where the phantom stands, seen by SmolVLA's image path: the localizer that insertion_vla.vision_pretrain trains,
and its estimate of the placement given to the policy as part of its state (`dataset.placement_estimate`).

The localizer is the VLM's vision encoder and pixel-shuffle connector, every camera's tokens into a linear head
that regresses the placement (dx, dy in mm, yaw in deg) from an episode's first frame. vision_pretrain writes it,
frozen, as localizer.safetensors into the VLM's folder, beside the image path it gives the policy.

Why the estimate goes into the state: trained on 2500 rendered placements, the image path locates the trocar to
1.4 mm, but a policy starting from it, trained on a few hundred demonstrations, kept far less of that (4.0-4.4 mm
final tip error on the narrow tier, benchmarks/README.md): its action expert must learn the map from image tokens
to joint targets from one placement per demonstration. Three numbers from the localizer are a map it can learn
from few.

Without the near-target refinement below, the estimate is made once per episode, from frame 0, and appended to the
state of every frame: in the training and validation samples and the statistics from the recorded frame 0
(EpisodeDataset, compute_dataset_stats.py), in the evaluator and the deployment's driver from the first observation
after its JPEG round trip (evaluation.drivers).

Near the trocar, with dataset.near_target_estimate, a second localizer refines it (PlacementEstimator): from the
tool camera, with the needle in view, it locates the entry relative to the needle tip to 1.1 mm across the needle
(benchmarks/bench_near_target_localization.py), where the first frame's is off by 2.15 mm in the plane: the fixed
cameras' randomized poses move the trocar in their images, the tool camera sees tip and trocar move together. From
the first frame whose tip pose lies in the window that localizer was trained on (before the entry as the first
estimate puts it), the estimate's dx, dy are the first frame's moved towards the mean of the near estimates so
far, by the weights vision_pretrain measured on held-out renders; its yaw stays the first frame's. Training runs it
over every recorded frame, the evaluator and the driver over the observations a chunk is predicted from.
"""

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers import AutoConfig
from transformers.models.smolvlm.modeling_smolvlm import SmolVLMConnector, SmolVLMVisionTransformer

from episode_format import EE_POSE_KEY
from episode_format.atomic import atomic_output
from insertion_vla.dataset import resize_with_pad
from insertion_vla.errors import UserError
from sim.kinematics import matrix_from_euler_xyz
from sim.scene import along_and_across, trocar_in_world

LOCALIZER_FILE = "localizer.safetensors"
NEAR_LOCALIZER_FILE = "near_localizer.safetensors"  # the near-target localizer (vision_pretrain --near_poses)
ESTIMATE_NAMES = ("phantom_dx_mm", "phantom_dy_mm", "phantom_yaw_deg")  # the values appended to the state
OFFSET_KEYS = ("phantom_dx", "phantom_dy", "phantom_yaw")  # the simulator's scene_params, an episode's attributes
OFFSET_UNITS = (1000.0, 1000.0, np.degrees(1.0))  # m, m, rad -> mm, mm, deg


def placement_offsets(attrs: dict) -> list[float]:
    """A placement's (dx, dy, yaw) in mm, mm, deg, from an episode's attributes or the env's scene_params."""
    return [float(attrs[key]) * unit for key, unit in zip(OFFSET_KEYS, OFFSET_UNITS)]


def localizer_images(frames: dict, cameras: tuple, side: int) -> np.ndarray:
    """Decoded frames (camera -> (H, W, 3) uint8) -> the localizer's input, (cameras, 3, side, side) uint8, resized
    with padding as the policy's images are."""
    return np.stack([resize_with_pad(frames[camera], side, side) for camera in cameras]).transpose(0, 3, 1, 2)


def as_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> [-1, 1], as SmolVLA scales them."""
    return images.float() / 127.5 - 1.0


class Localizer(torch.nn.Module):
    """SmolVLA's image path (vision encoder, then the pixel-shuffle connector), every camera's tokens into a linear
    head. forward: normalized offsets; predict: offsets in mm, mm, deg (target_mean/std, set when trained)."""

    def __init__(self, vlm_config, cameras: tuple[str, ...], side: int):
        super().__init__()
        self.cameras, self.side = tuple(cameras), side
        self.vision = SmolVLMVisionTransformer(vlm_config.vision_config)
        self.connector = SmolVLMConnector(vlm_config)
        tokens = (side // vlm_config.vision_config.patch_size) ** 2 // vlm_config.scale_factor**2
        self.head = torch.nn.Linear(len(self.cameras) * tokens * vlm_config.text_config.hidden_size, 3)
        self.register_buffer("target_mean", torch.zeros(3))
        self.register_buffer("target_std", torch.ones(3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, cameras, 3, H, W) in [-1, 1] -> (B, 3)
        batch = images.shape[0]
        tokens = self.connector(self.vision(pixel_values=images.flatten(0, 1)).last_hidden_state)
        return self.head(tokens.reshape(batch, -1))

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, cameras, 3, side, side) -> offsets (B, 3) in mm, mm, deg."""
        return self(as_pixels(images)) * self.target_std + self.target_mean

    @torch.no_grad()
    def estimate(self, frames: dict) -> np.ndarray:
        """The placement (dx mm, dy mm, yaw deg), float32, from one decoded frame of every camera (camera name ->
        (H, W, 3) uint8, as recorded)."""
        images = localizer_images(frames, self.cameras, self.side)
        return self.predict(torch.from_numpy(images)[None])[0].numpy().astype(np.float32)

    def save(self, path: Path, metadata: dict | None = None) -> None:
        """Weights, target normalization, cameras, image side and `metadata` (JSON values, e.g. the near-target
        window) in one safetensors file, written atomically."""
        tensors = {key: value.detach().contiguous() for key, value in self.state_dict().items()}
        extra = {key: json.dumps(value) for key, value in (metadata or {}).items()}
        with atomic_output(path) as tmp:
            save_file(tensors, str(tmp), metadata={**extra, "cameras": json.dumps(self.cameras), "side": str(self.side)})


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, hex."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def load_localizer(vlm_dir, file: str = LOCALIZER_FILE) -> Localizer:
    """The frozen localizer vision_pretrain wrote into vlm_dir as `file` (in eval mode, on the CPU); the JSON
    values it was saved with are its `metadata`."""
    vlm_dir = Path(vlm_dir)
    path = vlm_dir / file
    flag = " --near_poses 6000" if file == NEAR_LOCALIZER_FILE else ""
    if not path.is_file():
        instead = (" (which also pretrains the image path again: a policy trained on this folder then no longer fits "
                   "it), or set dataset.near_target_estimate: false") if file == NEAR_LOCALIZER_FILE else ""
        raise UserError(f"dataset.placement_estimate={vlm_dir}: no {file} there. It is written by "
                        f"`python -m insertion_vla.vision_pretrain {vlm_dir}{flag}` with the settings of the "
                        "pretraining there (its pretraining.json; a folder pretrained before the localizer was kept "
                        f"has none: run it again){instead}.")
    rewrite = (f"write it again with `python -m insertion_vla.vision_pretrain {vlm_dir}{flag}` (the settings of its "
               "pretraining.json)")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata, tensors = f.metadata() or {}, {key: f.get_tensor(key) for key in f.keys()}
        cameras, side = tuple(json.loads(metadata.pop("cameras"))), int(metadata.pop("side"))
        extra = {key: json.loads(value) for key, value in metadata.items()}
    except (SafetensorError, OSError, KeyError, ValueError) as err:
        raise UserError(f"dataset.placement_estimate={vlm_dir}: {path} is not a localizer vision_pretrain wrote "
                        f"({type(err).__name__}: {err}); {rewrite}") from None
    try:
        vlm_config = AutoConfig.from_pretrained(vlm_dir)
    except (OSError, ValueError) as err:
        raise UserError(f"dataset.placement_estimate={vlm_dir}: its VLM config.json cannot be read ({err}); the "
                        "localizer is built from the VLM it was pretrained in: name that folder") from None
    model = Localizer(vlm_config, cameras, side)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        raise UserError(f"dataset.placement_estimate={vlm_dir}: {path} does not fit the VLM of {vlm_dir / 'config.json'} "
                        f"({str(err).splitlines()[0]} ...); {rewrite}") from None
    model.metadata = extra
    return model.eval().requires_grad_(False)


@dataclass(frozen=True)
class NearTarget:
    """The near-target localizer: the entry relative to the needle tip, in the tip frame (mm), from poses with the
    tip `standoff_mm` before the entry on the trocar axis, up to `across_mm` off it per axis and the needle tilted
    up to `tilt_deg`; `weights`: how far its dx, dy move the first frame's (vision_pretrain measures them)."""

    localizer: Localizer
    standoff_mm: tuple[float, float]
    across_mm: float
    tilt_deg: float
    weights: np.ndarray

    @classmethod
    def load(cls, vlm_dir) -> "NearTarget":
        """The near-target localizer of vlm_dir; refused beside another localizer than the one its weights were fitted
        to (recorded in its metadata since the digest was added)."""
        localizer = load_localizer(vlm_dir, NEAR_LOCALIZER_FILE)
        m = localizer.metadata
        first, fused_with = Path(vlm_dir) / LOCALIZER_FILE, m.get("fused_with")  # none in files from before it
        if fused_with is not None and fused_with != file_digest(first):
            raise UserError(f"dataset.placement_estimate={vlm_dir}: {NEAR_LOCALIZER_FILE} was fitted to another "
                            f"{LOCALIZER_FILE} than the one there now (its fusion weights weigh that one's errors). "
                            f"Put back the {NEAR_LOCALIZER_FILE} written together with this {LOCALIZER_FILE}, or "
                            f"write both again with `python -m insertion_vla.vision_pretrain {vlm_dir} --near_poses "
                            "6000` and the settings of its pretraining.json (which also pretrains the image path "
                            "again: a policy trained on this folder then no longer fits it), or set "
                            "dataset.near_target_estimate: false.")
        return cls(localizer, tuple(m["standoff_mm"]), m["across_mm"], m["tilt_deg"],
                   np.asarray(m["fusion_weights"], np.float32))

    def sees(self, ee_pose: np.ndarray, placement: np.ndarray) -> bool:
        """Whether the tip (ee_pose) is in the window, for the trocar where `placement` (dx, dy mm, yaw deg) puts it."""
        entry, axis = trocar_of_placement(placement)
        past, across = along_and_across(ee_pose[:3], entry, axis)
        tilt = np.degrees(np.arccos(np.clip(matrix_from_euler_xyz(ee_pose[3:])[:, 2] @ axis, -1.0, 1.0)))
        # The rendered offsets are a cube of +/- across_mm per world axis, projected across the trocar axis: up to
        # sqrt(3) times it from the axis. The window keeps within sqrt(2) times, where most of them lie.
        return (self.standoff_mm[0] <= -past <= self.standoff_mm[1] and across <= np.sqrt(2) * self.across_mm
                and tilt <= self.tilt_deg)

    def placement_xy(self, frames: dict, ee_pose: np.ndarray, yaw_deg: float) -> np.ndarray:
        """The placement's dx, dy (mm) where this localizer sees the entry from the tip (ee_pose)."""
        return placement_xy_of_entry(self.localizer.estimate(frames), ee_pose, yaw_deg)


def trocar_of_placement(placement) -> tuple[np.ndarray, np.ndarray]:
    """The entry (m, world) and the trocar's unit axis where a placement (dx, dy mm, yaw deg) puts them."""
    return trocar_in_world(placement[0] / 1000.0, placement[1] / 1000.0, np.radians(placement[2]))


def placement_xy_of_entry(entry_in_tip_mm: np.ndarray, ee_pose: np.ndarray, yaw_deg: float) -> np.ndarray:
    """The placement's dx, dy (mm, float32) that puts the entry at entry_in_tip_mm in the frame of the tip at
    ee_pose, the phantom turned by yaw_deg."""
    entry = ee_pose[:3] + matrix_from_euler_xyz(ee_pose[3:]) @ (np.asarray(entry_in_tip_mm, np.float64) / 1000.0)
    nominal, _ = trocar_in_world(0.0, 0.0, np.radians(yaw_deg))
    return ((entry - nominal)[:2] * 1000.0).astype(np.float32)


class PlacementEstimator:
    """The placement estimate appended to the state (dataset.placement_estimate): the first frame's localizer's,
    and with `near` (dataset.near_target_estimate) refined near the trocar (the module's doc)."""

    def __init__(self, first: Localizer, near: NearTarget | None = None):
        self.first, self.near = first, near
        self.cameras = tuple(dict.fromkeys(first.cameras + (near.localizer.cameras if near else ())))

    def tracker(self, scene_params: dict | None = None) -> "EpisodeEstimate":
        """One episode's estimate; scene_params (the simulator's, env.scene_params) is read only by TruePlacement."""
        return EpisodeEstimate(self)

    def episode_estimates(self, episode) -> np.ndarray:
        """(T, 3) float32: the estimate at every frame of an opened episode (episode_format.reader.Episode; the
        simulator's cameras and ee_pose)."""
        return np.stack(list(self.frame_estimates(episode)))

    def frame_estimates(self, episode, read_image: Callable | None = None) -> Iterator[np.ndarray]:
        """The estimate (3,) at each frame in turn, as episode_estimates; read_image(camera, t) -> the decoded frame
        (default: the episode's): what it raises at a frame comes after the estimates of the frames before."""
        missing = [camera for camera in self.cameras if camera not in episode.keys.cameras]
        if missing:
            raise UserError(f"{episode.path}: the placement localizer (dataset.placement_estimate) sees the "
                            f"simulator's cameras {', '.join(self.cameras)}, but dataset.cameras does not name "
                            f"{', '.join(missing)}. The estimate is for simulator episodes (sim.collect): map their "
                            "cameras, or set dataset.placement_estimate: null.")
        read_image = read_image or episode.read_image
        ee_pose = episode.read_array(EE_POSE_KEY).astype(np.float64) if self.near else None
        tracker = self.tracker()
        for t in range(episode.length):
            yield tracker.update(None if ee_pose is None else ee_pose[t],
                                 lambda cameras, t=t: {c: read_image(c, t) for c in cameras})


class EpisodeEstimate:
    """One episode's estimate, frame by frame: update(ee_pose, frames) with the frames' reader (camera names ->
    {camera: decoded frame}, called only for the cameras needed) -> the estimate (3,) float32 at that frame."""

    def __init__(self, estimator: PlacementEstimator):
        self.estimator = estimator
        self.first = self.current = None
        self.near_sum, self.near_count = np.zeros(2), 0

    def update(self, ee_pose, frames: Callable[[tuple], dict]) -> np.ndarray:
        near = self.estimator.near
        if self.first is None:
            self.first = self.current = self.estimator.first.estimate(frames(self.estimator.first.cameras))
        elif near is not None and near.sees(np.asarray(ee_pose, np.float64), self.first):
            self.near_sum += near.placement_xy(frames(near.localizer.cameras), np.asarray(ee_pose, np.float64),
                                               self.first[2])
            self.near_count += 1
            current = self.first.copy()
            current[:2] += near.weights * (self.near_sum / self.near_count - self.first[:2])
            self.current = current  # one assignment: a thread predicting meanwhile reads the old or the new estimate
        return self.current.copy()


class TruePlacement:
    """A perfect estimate (dataset.true_placement): the simulator's own placement where the localizer's estimate
    would stand in the state, from each episode's recorded attributes in training and from the env's scene_params
    in closed loop. No robot has it: it measures how much of the closed-loop error is the policy's own, with the
    placement known exactly (benchmarks/bench_learning.py --true_placement). offset_mm moves its dx, dy: a
    localizer's error, to measure how much of it a policy tolerates (benchmarks/probe_placement_tolerance.py)."""

    cameras = ()
    near = None

    def __init__(self, offset_mm=(0.0, 0.0)):
        if len(offset_mm) != 2:
            raise ValueError(f"TruePlacement(offset_mm): dx, dy in mm, got {offset_mm!r}")
        self.offset = np.array([*offset_mm, 0.0], np.float32)

    def placement(self, scene_params: dict, source: str = "the simulator's scene") -> np.ndarray:
        """(dx mm, dy mm, yaw deg) of an episode's attributes or the env's scene_params, offset."""
        missing = [key for key in OFFSET_KEYS if key not in scene_params]
        if missing:
            raise UserError(f"{source}: dataset.true_placement reads the placement from the attributes "
                            f"{', '.join(OFFSET_KEYS)}, and {', '.join(missing)} is missing. It is for episodes "
                            "recorded by sim.collect: train on those, or set dataset.true_placement: false.")
        return np.asarray(placement_offsets(scene_params), np.float32) + self.offset

    def tracker(self, scene_params: dict | None = None) -> "KnownPlacement":
        return KnownPlacement(self, scene_params)

    def episode_estimates(self, episode) -> np.ndarray:
        return np.tile(self.placement(episode.attrs, str(episode.path)), (episode.length, 1))

    def frame_estimates(self, episode, read_image: Callable | None = None) -> Iterator[np.ndarray]:
        yield from self.episode_estimates(episode)


class KnownPlacement:
    """TruePlacement's tracker: the episode's placement at every frame, its images unread. Its fields are
    EpisodeEstimate's (benchmarks/probe_entry_crossing.py reads them): the first estimate is the placement, and
    nothing refines it."""

    near_count = 0

    def __init__(self, estimator: TruePlacement, scene_params: dict | None):
        self.placement = estimator.placement(scene_params) if scene_params is not None else None  # once an episode
        self.first = self.current = None

    def update(self, ee_pose, frames: Callable[[tuple], dict]) -> np.ndarray:
        if self.placement is None:
            raise UserError("dataset.true_placement: the policy's state holds the simulator's true placement, but "
                            "this driver was not given the simulator's scene (PolicyDriver.reset(env, seed)): run "
                            "it in evaluate_smolvla_sim.py, or train without dataset.true_placement.")
        self.first = self.current = self.placement
        return self.current.copy()


def estimator_from_config(dataset_cfg: dict) -> PlacementEstimator | TruePlacement | None:
    """The estimate the config appends to the state (dataset.placement_estimate, near_target_estimate, or
    true_placement), or None."""
    if dataset_cfg.get("true_placement"):
        return TruePlacement()
    folder = dataset_cfg.get("placement_estimate")
    if not folder:
        return None
    return PlacementEstimator(load_localizer(folder), NearTarget.load(folder) if dataset_cfg.get("near_target_estimate") else None)
