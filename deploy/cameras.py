"""Cameras through OpenCV: one capture thread per camera keeps its newest frame (RGB) and when it was captured, so
that observing never waits for a camera and a stalled one shows as an old frame (the control loop stops on it)."""

import threading
import time

import cv2
import numpy as np

from episode_format.errors import UserError


class CameraCapture:
    """A cv2.VideoCapture (a device index, or a file / stream URL) read continuously in a thread of its own."""

    def __init__(self, name: str, source: int | str, width: int, height: int, first_frame_timeout_s: float = 5.0):
        self.name, self.source = name, source
        self._capture = cv2.VideoCapture(source)
        if not self._capture.isOpened():
            raise UserError(f"camera {name!r}: cannot open OpenCV capture {source!r}. Check --cameras (a device index "
                            "as in /dev/videoN, or a video file / stream URL) and that no other program holds it.")
        self._capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        self._capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        self._lock = threading.Lock()
        self._frame: np.ndarray | None = None
        self._time = -np.inf
        self._running = True
        self.ended = False  # the capture returned no frame: unplugged, or the end of a file
        self._thread = threading.Thread(target=self._read_forever, name=f"camera-{name}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + first_frame_timeout_s
        while self.latest()[0] is None:
            if self.ended or time.monotonic() > deadline:
                self.close()
                raise UserError(f"camera {name!r} ({source!r}) opened but delivered no frame within "
                                f"{first_frame_timeout_s:.0f} s")
            time.sleep(0.01)

    def _read_forever(self) -> None:
        while self._running:
            ok, frame = self._capture.read()
            if not ok:
                self.ended = True
                return
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            with self._lock:
                self._frame, self._time = rgb, time.monotonic()

    def latest(self) -> tuple[np.ndarray | None, float]:
        """The newest frame (uint8 RGB) and its capture time (time.monotonic()), None before the first."""
        with self._lock:
            return self._frame, self._time

    def close(self) -> None:
        self._running = False
        self._thread.join(timeout=2.0)
        self._capture.release()


def open_cameras(sources: dict, width: int, height: int) -> dict[str, CameraCapture]:
    """{camera name: device index or URL} -> running captures; those opened so far are closed if one fails."""
    opened = {}
    try:
        for name, source in sources.items():
            opened[name] = CameraCapture(name, source, width, height)
    except BaseException:
        for capture in opened.values():
            capture.close()
        raise
    return opened
