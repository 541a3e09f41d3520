"""Camera frames as stored: one JPEG buffer (1-D uint8) per frame, RGB once decoded."""

import cv2
import numpy as np

# The collector's --jpeg_quality; the evaluator and the robot's recorder encode frames as it does by default.
DEFAULT_JPEG_QUALITY = 95


def encode_jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> JPEG bytes as a 1-D uint8 array."""
    ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for an image of shape {image.shape}")
    return buffer.reshape(-1)


def decode_jpeg(buffer: np.ndarray) -> np.ndarray:
    """JPEG bytes -> uint8 RGB (H, W, 3); ValueError when they are not a decodable JPEG."""
    image = cv2.imdecode(np.asarray(buffer, dtype=np.uint8), cv2.IMREAD_COLOR_RGB)  # straight to RGB: no extra pass
    if image is None:
        raise ValueError("cannot decode JPEG frame")
    return image


def as_recorded(image: np.ndarray, quality: int) -> np.ndarray:
    """A rendered uint8 RGB frame as an episode file gives it back: through the JPEG round trip at `quality`
    (0: none, the frame as it is)."""
    return decode_jpeg(encode_jpeg(image, quality)) if quality else image
