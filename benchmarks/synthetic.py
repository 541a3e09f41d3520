"""Episode files in the project's HDF5 format, made up for benchmarks (the tests' writer makes tiny ones).

Full-size episodes carry what throughput depends on: three 640x480 cameras stored as JPEG q95 of a smooth
scene with Gaussian pixel noise (std 5) baked in, so each JPEG has the size of a real rendered frame rather
than the few kB of a clean gradient. Low-dimensional episodes carry only what statistics read (state, action)
plus one 1x1 raw pixel per frame and camera, so the files pass the schema check at almost no size.
"""

from pathlib import Path

import cv2
import h5py
import numpy as np
from tqdm import tqdm

CAMERAS = ("side_camera", "tool_camera", "top_camera")
TASK = "Insert needle into eye trocar in simulation"
FPS = 15.0  # the simulator's control rate (sim/expert.py)


NOISE_MARGIN = 64


def noise_field(height: int, width: int, noise_std: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise a little larger than a frame; each frame takes a shifted window of it (drawing fresh
    noise would cost more than encoding the JPEG)."""
    return rng.standard_normal((height + NOISE_MARGIN, width + NOISE_MARGIN, 3), dtype=np.float32) * noise_std


def noisy_frame(t: int, camera: int, height: int, width: int, noise: np.ndarray) -> np.ndarray:
    """uint8 RGB (height, width, 3): soft shaded shapes that drift with t, plus a window of `noise`."""
    x = np.arange(width, dtype=np.float32)[None, :]
    y = np.arange(height, dtype=np.float32)[:, None]
    cx, cy = width * (0.3 + 0.1 * camera) + 3 * t, height * 0.5 + 2 * t * (camera - 1)
    blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * (0.12 * width) ** 2))
    img = np.empty((height, width, 3), np.float32)
    img[..., 0] = 60 + 120 * blob + 40 * x / width
    img[..., 1] = 80 + 90 * blob * (camera + 1) / 3
    img[..., 2] = 140 - 60 * y / height
    dy, dx = (7 * t + 11 * camera) % NOISE_MARGIN, (13 * t + 5 * camera) % NOISE_MARGIN
    img += noise[dy:dy + height, dx:dx + width]
    return np.clip(img, 0, 255, out=img).astype(np.uint8)


def _lowdim(length: int, seed: int) -> dict:
    """Smooth joint-like trajectories: ee_pose (T, 6), qpos (T, 6), action (T, 6), float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(length, dtype=np.float32)[:, None]
    qpos = np.sin(t * 0.05 + np.arange(6) + seed) * 0.5 + rng.normal(0, 0.01, (length, 6))
    ee = np.cos(t * 0.03 + np.arange(6)) * 0.1 + rng.normal(0, 0.001, (length, 6))
    return {"observations/qpos": qpos.astype(np.float32), "observations/ee_pose": ee.astype(np.float32),
            "action": (qpos + 0.01).astype(np.float32)}


def _write(path: Path, length: int, seed: int, write_cameras):
    tmp = path.with_name(f"{path.name}.tmp-bench")
    with h5py.File(tmp, "w") as f:
        write_cameras(f)
        for key, value in _lowdim(length, seed).items():
            f.create_dataset(key, data=value)
        f.create_dataset("timestamp", data=np.arange(length, dtype=np.float32) / FPS)
        f.attrs.update({"task": TASK, "sim_seed": seed, "success": True, "format_version": 1, "fps": FPS})
    tmp.replace(path)
    return path


def write_full_size_episodes(root, n: int, length: int, *, height=480, width=640, quality=95, noise_std=5.0) -> list[Path]:
    """n episodes of `length` frames, three JPEG cameras each; returns the paths."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in tqdm(range(n), desc="writing full-size episodes", unit="ep"):
        noise = noise_field(height, width, noise_std, np.random.default_rng(i))

        def write_cameras(f):
            for c, camera in enumerate(CAMERAS):
                ds = f.create_dataset(f"observations/images/{camera}", (length,), dtype=h5py.vlen_dtype(np.uint8))
                for t in range(length):
                    rgb = noisy_frame(t, c, height, width, noise)
                    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
                    assert ok
                    ds[t] = jpeg.ravel()

        paths.append(_write(root / f"episode_{i:04d}.h5", length, i, write_cameras))
    return paths


def write_lowdim_episodes(root, n: int, length: int) -> list[Path]:
    """n episodes of `length` frames whose cameras are (T, 1, 1, 3) raw pixels: statistics never read them."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)

    def write_cameras(f):
        for camera in CAMERAS:
            f.create_dataset(f"observations/images/{camera}", data=np.zeros((length, 1, 1, 3), np.uint8))

    return [_write(root / f"episode_{i:04d}.h5", length, i, write_cameras)
            for i in tqdm(range(n), desc="writing low-dim episodes", unit="ep")]
