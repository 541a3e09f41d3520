"""Per-episode randomization of the scene: the phantom placement (part of the task, always on) and the
domain randomization (DR) of appearance and dynamics, which `--no_dr` switches off.

Every sampled value is a named number (see `SceneRandomizer.sample`); the recorder stores them as HDF5
attributes, so an episode's scene can be reconstructed and the ranges checked.
"""

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import mujoco
import numpy as np

from sim.kinematics import quat_from_rotvec, quat_multiply
from sim.scene import CAMERA_NAMES, JOINT_NAMES, MATERIALS, PHANTOM_BODY, TEXTURE_SIZE, TEXTURED_MATERIALS

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


PHANTOM_FLAG_PREFIX = "phantom_"  # of the flags and of the episode files' attributes


@dataclass(frozen=True)
class PhantomPlacement:
    """Where the eye phantom stands, relative to its nominal place (world frame, m / deg)."""

    x_range: float = field(default=0.1, metadata={"help": "phantom x offset range, +/- m (lateral to the robot)"})
    y_min: float = field(default=-0.05, metadata={"help": "phantom y offset minimum, m (towards the robot)"})
    y_max: float = field(default=0.03, metadata={"help": "phantom y offset maximum, m (away from the robot)"})
    yaw_range_deg: float = field(default=30.0, metadata={"help": "phantom yaw range, +/- deg"})

    def __post_init__(self):
        if self.x_range < 0 or self.yaw_range_deg < 0 or self.y_min > self.y_max:
            raise ValueError(
                f"phantom placement needs x_range >= 0, yaw_range_deg >= 0 and y_min <= y_max, got {self}; "
                "fix the --phantom_* flags"
            )

    def to_attrs(self) -> dict:
        """As an episode file's attributes (phantom_x_range, ...): the range its collection drew from."""
        return {PHANTOM_FLAG_PREFIX + name: value for name, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_attrs(cls, attrs) -> "PhantomPlacement | None":
        """The range an episode file was collected with; None for files from before it was recorded."""
        names = [f.name for f in dataclasses.fields(cls)]
        if not all(PHANTOM_FLAG_PREFIX + name in attrs for name in names):
            return None
        return cls(**{name: float(attrs[PHANTOM_FLAG_PREFIX + name]) for name in names})


@dataclass(frozen=True)
class DomainRandomization:
    """Ranges of the appearance and dynamics randomization; a range of 0 switches that item off."""

    light_position: float = field(default=0.5, metadata={"help": "light position offset, +/- m per axis"})
    camera_position: float = field(default=0.002, metadata={"help": "camera position offset, +/- m per axis"})
    camera_rotation: float = field(
        default=0.02, metadata={"help": "camera rotation, +/- rad about a uniformly random axis"}
    )
    color: float = field(
        default=0.1, metadata={"help": "material colour offset, +/- per RGB channel (and on specular, shininess)"}
    )
    image_noise_std: float = field(default=5.0, metadata={"help": "Gaussian image noise std, in 0-255 units"})
    qpos_noise_std: float = field(default=0.001, metadata={"help": "measured joint position noise std, rad"})
    damping: float = field(default=0.5, metadata={"help": "joint damping scale range, +/- fraction of nominal"})
    backgrounds: str | None = field(
        default=None,
        metadata={"help": "directory of background images for the backdrop and table (procedural textures if unset)"},
    )

    def __post_init__(self):
        ranges = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "backgrounds"}
        negative = {name: value for name, value in ranges.items() if value < 0}
        if negative:
            raise ValueError(f"domain randomization ranges must be >= 0, got {negative}; fix those flags")
        if self.damping > 1:
            raise ValueError(
                f"--damping must be <= 1 (the scale 1 - damping stays >= 0), got {self.damping}; fix the flag"
            )

    @classmethod
    def off(cls) -> "DomainRandomization":
        """All ranges zero: the nominal scene, no noise."""
        return cls(**{f.name: 0.0 for f in dataclasses.fields(cls) if f.name != "backgrounds"})


def add_randomization_args(parser: argparse.ArgumentParser) -> None:
    """One flag per range (defaults = the dataclass defaults; phantom ones prefixed `--phantom_`) and `--no_dr`."""
    groups = (
        (PhantomPlacement, PHANTOM_FLAG_PREFIX, "phantom placement (part of the task, always randomized)"),
        (DomainRandomization, "", "domain randomization (--no_dr switches it all off; a range of 0 one item)"),
    )
    for config, prefix, title in groups:
        group = parser.add_argument_group(title)
        for f in dataclasses.fields(config):
            group.add_argument(
                f"--{prefix}{f.name}",
                type=str if f.name == "backgrounds" else float,
                default=f.default,
                metavar="DIR" if f.name == "backgrounds" else None,
                help=f"{f.metadata['help']} (default: %(default)s)",
            )
    parser.add_argument(
        "--no_dr", action="store_true", help="switch domain randomization off (phantom placement stays)"
    )


def randomization_from_args(args: argparse.Namespace) -> tuple[PhantomPlacement, DomainRandomization | None]:
    phantom = PhantomPlacement(
        **{f.name: getattr(args, PHANTOM_FLAG_PREFIX + f.name) for f in dataclasses.fields(PhantomPlacement)}
    )
    if args.no_dr:
        return phantom, None
    dr = DomainRandomization(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DomainRandomization)})
    return phantom, dr


def procedural_texture(rng: np.random.Generator, size: int = TEXTURE_SIZE) -> np.ndarray:
    """A random RGB uint8 texture: smooth noise, checkerboard, stripes or blobs, in random colours."""
    colors = rng.uniform(0.0, 255.0, size=(2, 3))
    pattern = int(rng.integers(4))
    y, x = np.mgrid[0:size, 0:size] / size
    if pattern == 0:  # smooth noise
        cells = int(rng.integers(2, 9))
        coarse = rng.uniform(0.0, 1.0, size=(cells, cells)).astype(np.float32)
        mix = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    elif pattern == 1:  # checkerboard
        cells = int(rng.integers(2, 12))
        mix = ((np.floor(x * cells) + np.floor(y * cells)) % 2).astype(np.float32)
    elif pattern == 2:  # stripes at a random angle
        angle = rng.uniform(0.0, np.pi)
        frequency = rng.uniform(2.0, 12.0)
        mix = 0.5 + 0.5 * np.sin(2 * np.pi * frequency * (x * np.cos(angle) + y * np.sin(angle)))
    else:  # blobs
        mix = np.zeros((size, size), dtype=np.float32)
        for _ in range(int(rng.integers(3, 12))):
            center = rng.uniform(0.0, 1.0, size=2)
            radius = rng.uniform(0.05, 0.3)
            mix[(x - center[0]) ** 2 + (y - center[1]) ** 2 < radius**2] = 1.0
    mix = np.clip(mix, 0.0, 1.0)[..., None]
    texture = colors[0] * (1.0 - mix) + colors[1] * mix + rng.normal(0.0, 6.0, size=(size, size, 3))
    return np.clip(texture, 0.0, 255.0).astype(np.uint8)


def load_backgrounds(directory: str | Path) -> list[np.ndarray]:
    """All images of a directory (sorted by name), as TEXTURE_SIZE x TEXTURE_SIZE RGB uint8."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"--backgrounds {directory}: not a directory; pass a folder of images or leave it unset"
        )
    paths = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(
            f"--backgrounds {directory}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found; "
            "add some or leave the flag unset for procedural textures"
        )
    images = []
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"--backgrounds: cannot decode image {path}; remove it or convert it to PNG/JPEG")
        image = cv2.resize(image, (TEXTURE_SIZE, TEXTURE_SIZE), interpolation=cv2.INTER_AREA)
        images.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    return images


NOMINAL_TEXTURE_SEEDS = {"table": 0, "backdrop": 1}  # the textures used without DR


class SceneRandomizer:
    """Samples an episode's scene parameters and writes them into the model, from its nominal values."""

    def __init__(self, model: mujoco.MjModel, phantom: PhantomPlacement, dr: DomainRandomization | None):
        self.phantom = phantom
        self.dr = dr
        self.backgrounds = load_backgrounds(dr.backgrounds) if dr is not None and dr.backgrounds else []
        self._phantom_id = model.body(PHANTOM_BODY).id
        self._nominal = {
            "phantom_pos": model.body_pos[self._phantom_id].copy(),
            "light_pos": model.light_pos.copy(),
            "cam_pos": model.cam_pos.copy(),
            "cam_quat": model.cam_quat.copy(),
            "mat_rgba": model.mat_rgba.copy(),
            "mat_specular": model.mat_specular.copy(),
            "mat_shininess": model.mat_shininess.copy(),
            "dof_damping": model.dof_damping.copy(),
        }
        self._light_names = [model.light(i).name for i in range(model.nlight)]

    def sample(self, rng: np.random.Generator) -> dict[str, float]:
        """Every randomized quantity of one episode, by name (m, rad, colour units, scale factors).
        Without DR the DR entries are their no-op values."""
        p = self.phantom
        params = {
            "phantom_dx": rng.uniform(-p.x_range, p.x_range),
            "phantom_dy": rng.uniform(p.y_min, p.y_max),
            "phantom_yaw": np.deg2rad(rng.uniform(-p.yaw_range_deg, p.yaw_range_deg)),
        }
        dr = self.dr if self.dr is not None else DomainRandomization.off()
        for light in self._light_names:
            for axis, value in zip("xyz", rng.uniform(-dr.light_position, dr.light_position, size=3)):
                params[f"dr_{light}_d{axis}"] = value
        for camera in CAMERA_NAMES:
            for axis, value in zip("xyz", rng.uniform(-dr.camera_position, dr.camera_position, size=3)):
                params[f"dr_{camera}_d{axis}"] = value
            direction = rng.normal(size=3)
            rotvec = direction / np.linalg.norm(direction) * rng.uniform(-dr.camera_rotation, dr.camera_rotation)
            for axis, value in zip("xyz", rotvec):
                params[f"dr_{camera}_rot{axis}"] = value
        for material in MATERIALS:
            for channel, value in zip("rgb", rng.uniform(-dr.color, dr.color, size=3)):
                params[f"dr_{material}_d{channel}"] = value
            params[f"dr_{material}_dspecular"] = rng.uniform(-dr.color, dr.color)
            params[f"dr_{material}_dshininess"] = rng.uniform(-dr.color, dr.color)
        for joint, value in zip(JOINT_NAMES, rng.uniform(1.0 - dr.damping, 1.0 + dr.damping, size=len(JOINT_NAMES))):
            params[f"dr_{joint}_damping_scale"] = value
        for material in TEXTURED_MATERIALS:
            # Image index into the sorted --backgrounds folder, or the seed of a procedural texture.
            if self.dr is None:
                params[f"dr_{material}_texture"] = NOMINAL_TEXTURE_SEEDS[material]
            elif self.backgrounds:
                params[f"dr_{material}_texture"] = int(rng.integers(len(self.backgrounds)))
            else:
                params[f"dr_{material}_texture"] = int(rng.integers(2**31 - 1))
        params["dr_from_images"] = int(bool(self.backgrounds))
        params["dr_image_noise_std"] = dr.image_noise_std
        params["dr_qpos_noise_std"] = dr.qpos_noise_std
        return {k: (v if isinstance(v, int) else float(v)) for k, v in params.items()}

    def apply(self, model: mujoco.MjModel, params: dict[str, float]) -> None:
        """Write the sampled parameters into the model (always starting from the nominal values)."""
        n = self._nominal
        model.body_pos[self._phantom_id] = n["phantom_pos"] + [params["phantom_dx"], params["phantom_dy"], 0.0]
        model.body_quat[self._phantom_id] = quat_from_rotvec(np.array([0.0, 0.0, params["phantom_yaw"]]))
        for i, light in enumerate(self._light_names):
            model.light_pos[i] = n["light_pos"][i] + [params[f"dr_{light}_d{a}"] for a in "xyz"]
        for camera in CAMERA_NAMES:
            i = model.camera(camera).id
            model.cam_pos[i] = n["cam_pos"][i] + [params[f"dr_{camera}_d{a}"] for a in "xyz"]
            rotation = quat_from_rotvec(np.array([params[f"dr_{camera}_rot{a}"] for a in "xyz"]))
            quat = quat_multiply(n["cam_quat"][i], rotation)  # a small rotation in the camera's own frame
            model.cam_quat[i] = quat / np.linalg.norm(quat)
        for material in MATERIALS:
            i = model.material(material).id
            offset = [params[f"dr_{material}_d{c}"] for c in "rgb"]
            model.mat_rgba[i, :3] = np.clip(n["mat_rgba"][i, :3] + offset, 0.0, 1.0)
            model.mat_specular[i] = np.clip(n["mat_specular"][i] + params[f"dr_{material}_dspecular"], 0.0, 1.0)
            model.mat_shininess[i] = np.clip(n["mat_shininess"][i] + params[f"dr_{material}_dshininess"], 0.0, 1.0)
        for joint in JOINT_NAMES:
            dof = model.joint(joint).dofadr[0]
            model.dof_damping[dof] = n["dof_damping"][dof] * params[f"dr_{joint}_damping_scale"]
        for material, texture in TEXTURED_MATERIALS.items():
            value = params[f"dr_{material}_texture"]
            if params["dr_from_images"]:
                image = self.backgrounds[value]
            else:
                image = procedural_texture(np.random.default_rng(value))
            _write_texture(model, texture, image)


def _write_texture(model: mujoco.MjModel, name: str, image: np.ndarray) -> None:
    i = model.texture(name).id
    start = model.tex_adr[i]
    size = model.tex_height[i] * model.tex_width[i] * model.tex_nchannel[i]
    model.tex_data[start : start + size] = image.reshape(-1)
