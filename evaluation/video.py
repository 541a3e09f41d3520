"""MP4 recording of an evaluation episode: the three cameras side by side, from a renderer of the video's own."""

from pathlib import Path

import imageio_ffmpeg
import mujoco
import numpy as np

from episode_format.atomic import atomic_output
from sim.env import CONTROL_HZ, NeedleInsertionEnv
from sim.scene import CAMERA_NAMES


class EpisodeVideo:
    """The three cameras side by side, streamed to an MP4 (H.264), written atomically.

    Frames are rendered from the simulation state by a renderer of the video's own, so recording changes nothing
    the policy sees (the env's image-noise stream advances only with the env's own renders); they carry no image
    noise. Call add(env) right after reset (the renderer then uploads the episode's textures) and after each step.
    """

    def __init__(self, path: Path):
        self.path = path
        self._renderer = None
        self._writer = None

    def __enter__(self):
        self._output = atomic_output(self.path)
        self._temporary = self._output.__enter__()
        return self

    def add(self, env: NeedleInsertionEnv) -> None:
        if self._renderer is None:
            self._renderer = mujoco.Renderer(env.model, env.height, env.width)
        images = []
        for camera in CAMERA_NAMES:
            self._renderer.update_scene(env.data, camera=camera)
            images.append(self._renderer.render())
        frame = np.concatenate(images, axis=1)
        frame = np.pad(frame, ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)))  # H.264 wants even sizes
        if self._writer is None:
            # The container is named explicitly: the temporary file's name does not end in .mp4.
            self._writer = imageio_ffmpeg.write_frames(
                str(self._temporary), (frame.shape[1], frame.shape[0]), fps=CONTROL_HZ, codec="libx264", quality=7,
                macro_block_size=1, output_params=["-f", "mp4"],
            )
            self._writer.send(None)
        self._writer.send(np.ascontiguousarray(frame))

    def __exit__(self, *exc):
        if self._renderer is not None:
            self._renderer.close()
        if self._writer is not None:
            self._writer.close()
        return self._output.__exit__(*exc)
