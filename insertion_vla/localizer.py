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

The estimate is made once per episode, from frame 0, and appended to the state of every frame: in the training and
validation samples and the statistics from the recorded frame 0 (EpisodeDataset, compute_dataset_stats.py), in the
evaluator and the deployment's driver from the first observation after its JPEG round trip (evaluation.drivers).
"""

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers import AutoConfig
from transformers.models.smolvlm.modeling_smolvlm import SmolVLMConnector, SmolVLMVisionTransformer

from episode_format.atomic import atomic_output
from insertion_vla.dataset import resize_with_pad
from insertion_vla.errors import UserError

LOCALIZER_FILE = "localizer.safetensors"
ESTIMATE_NAMES = ("phantom_dx_mm", "phantom_dy_mm", "phantom_yaw_deg")  # the values appended to the state


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

    def episode_estimate(self, episode) -> np.ndarray:
        """The estimate from an opened episode's frame 0 (episode_format.reader.Episode; the simulator's cameras)."""
        missing = [camera for camera in self.cameras if camera not in episode.keys.cameras]
        if missing:
            raise UserError(f"{episode.path}: the placement localizer (dataset.placement_estimate) sees the "
                            f"simulator's cameras {', '.join(self.cameras)}, but dataset.cameras does not name "
                            f"{', '.join(missing)}. The estimate is for simulator episodes (sim.collect): map their "
                            "cameras, or set dataset.placement_estimate: null.")
        return self.estimate({camera: episode.read_image(camera, 0) for camera in self.cameras})

    def save(self, path: Path) -> None:
        """Weights, target normalization, cameras and image side in one safetensors file, written atomically."""
        tensors = {key: value.detach().contiguous() for key, value in self.state_dict().items()}
        with atomic_output(path) as tmp:
            save_file(tensors, str(tmp), metadata={"cameras": json.dumps(self.cameras), "side": str(self.side)})


def load_localizer(vlm_dir) -> Localizer:
    """The frozen localizer vision_pretrain wrote into vlm_dir (in eval mode, on the CPU)."""
    vlm_dir = Path(vlm_dir)
    path = vlm_dir / LOCALIZER_FILE
    if not path.is_file():
        raise UserError(f"dataset.placement_estimate={vlm_dir}: no {LOCALIZER_FILE} there. It is written by "
                        f"`python -m insertion_vla.vision_pretrain {vlm_dir}` with the settings of the pretraining "
                        "there (its pretraining.json; a folder pretrained before the localizer was kept has none: "
                        "run it again).")
    rewrite = (f"write it again with `python -m insertion_vla.vision_pretrain {vlm_dir}` (the settings of its "
               "pretraining.json)")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata, tensors = f.metadata() or {}, {key: f.get_tensor(key) for key in f.keys()}
        cameras, side = tuple(json.loads(metadata["cameras"])), int(metadata["side"])
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
    return model.eval().requires_grad_(False)


def localizer_from_config(dataset_cfg: dict) -> Localizer | None:
    """The localizer whose estimate the config appends to the state (dataset.placement_estimate), or None."""
    folder = dataset_cfg.get("placement_estimate")
    return load_localizer(folder) if folder else None
