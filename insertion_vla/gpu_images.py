"""dataset.decode=cuda: the batch's camera JPEGs decoded and resized with padding on the training device.

The DataLoader workers then only read bytes (EpisodeDataset(decode="cuda") returns each frame's JPEG as a 1-D
uint8 tensor, a list of them per camera in the batch); torchvision decodes a camera's list in one batched call
(nvJPEG on CUDA, libjpeg on the CPU, where the tests run the same code) and the resize is the geometry of
insertion_vla.dataset.resize_with_pad, so the policy sees the same images as with decode=cpu to within a grey
level. A sample with a JPEG that does not decode is replaced as the dataset replaces one on the CPU.
"""

import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_jpeg

from episode_format.errors import EpisodeFormatError
from insertion_vla.dataset import BAD_FRAMES, BadFrame, EpisodeDataset


def resize_with_pad(images: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """uint8 (B, 3, h, w) -> (B, 3, height, width) where they are: aspect kept, bilinear, zero padding on the left
    and top, rounded back to uint8 (insertion_vla.dataset.resize_with_pad with torch instead of OpenCV)."""
    h, w = images.shape[-2:]
    ratio = max(w / width, h / height)
    new_h, new_w = int(h / ratio), int(w / ratio)
    if (new_h, new_w) != (h, w):
        resized = F.interpolate(images.float(), size=(new_h, new_w), mode="bilinear", align_corners=False)
        images = resized.round_().clamp_(0, 255).to(torch.uint8)
    if (new_h, new_w) == (height, width):
        return images
    out = images.new_zeros((*images.shape[:-3], 3, height, width))
    out[..., height - new_h:, width - new_w:] = images
    return out


def decode_jpegs(jpegs: list[torch.Tensor], device) -> list[torch.Tensor | str]:
    """JPEG bytes (1-D uint8, on the CPU) -> uint8 RGB (3, h, w) on `device`, one batched call; where a JPEG does not
    decode, the problem as a string in its place (the batch is then decoded one by one to find it)."""
    try:
        return decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        decoded = []
        for jpeg in jpegs:
            try:
                decoded.append(decode_jpeg(jpeg, mode=ImageReadMode.RGB, device=device))
            except RuntimeError as err:
                decoded.append(f"is not a decodable JPEG on {torch.device(device).type} ({len(jpeg)} bytes: "
                               f"{str(err).splitlines()[0]}).")
        return decoded


def decode_resize_pad(jpegs: list[torch.Tensor], width: int, height: int, device) -> tuple[torch.Tensor, dict]:
    """-> (uint8 (B, 3, height, width) on `device`, {position: problem} of the JPEGs that did not decode, whose
    images are left black)."""
    decoded = decode_jpegs(jpegs, device)
    by_shape = {}
    for i, image in enumerate(decoded):
        if isinstance(image, torch.Tensor):
            by_shape.setdefault(tuple(image.shape), []).append(i)
    problems = {i: p for i, p in enumerate(decoded) if isinstance(p, str)}
    if len(by_shape) == 1 and not problems:  # the usual batch: one camera, one frame size
        return resize_with_pad(torch.stack(decoded), width, height), problems
    out = torch.zeros((len(jpegs), 3, height, width), dtype=torch.uint8, device=device)
    for positions in by_shape.values():
        out[positions] = resize_with_pad(torch.stack([decoded[i] for i in positions]), width, height)
    return out, problems


class DeviceImageDecoder:
    """A collated batch of EpisodeDataset(decode="cuda") -> the same batch with uint8 (B, 3, H, W) images on `device`.

    A sample with a JPEG that does not decode is replaced by dataset.replacement_for (the dataset's own rule,
    decoded on the CPU) and the frame recorded in its bad_frames, for the training loop to log; without
    dataset.replace_bad_frames it is an error naming the frame.
    """

    def __init__(self, dataset: EpisodeDataset, device):
        self.dataset, self.device = dataset, torch.device(device)
        self.cameras = {f"observation.images.{name}": camera for camera, name in dataset.keys.cameras.items()}

    def __call__(self, batch: dict) -> dict:
        batch = dict(batch)
        failed = {}  # position in the batch -> its first JPEG that did not decode
        for key, camera in self.cameras.items():
            batch[key], problems = decode_resize_pad(batch[key], self.dataset.width, self.dataset.height, self.device)
            for i, problem in problems.items():
                if i not in failed:
                    pos, frame = self.dataset.locate(self.dataset.index_of(int(batch["episode_index"][i]),
                                                                           int(batch["frame_index"][i])))
                    failed[i] = BadFrame(self.dataset.paths[pos], camera, frame, f"camera '{camera}' frame {frame} {problem}")
        for i, bad in failed.items():
            self._replace(batch, i, bad)
        return batch

    def _replace(self, batch: dict, i: int, bad: BadFrame):
        if not self.dataset.replace_bad_frames:
            raise EpisodeFormatError(f"{bad} Re-record the episode or remove it.")
        sample = self.dataset.replacement_for({key: batch[key][i] for key in (BAD_FRAMES, "sample_index")}, bad.record)
        for key, value in sample.items():
            batch[key][i] = value.to(self.device) if key in self.cameras else value
