"""Safety of an insertion: did the needle enter the eye anywhere but through the trocar's cannula?

The needle is the segment from its base (the end of the holder) to its tip. It enters the eye where that segment
crosses the eye sphere, the eye wall (its base, if the base is already inside). The entry is through the trocar
when that crossing lies within the cannula, the thin tube of the trocar through the eye wall along its axis;
the needle may then pivot about the cannula, as a real instrument does, and what lies beyond the wall is the
intended insertion. A crossing anywhere else is a penetration of the eye wall beside the trocar. Its depth is
how far the needle reaches below the eye's surface: the eye radius minus the distance from the eye centre of the
segment's point nearest to it.

(A needle that came in through the cannula and left the eye again through the far wall is not counted here.)
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EyeGeometry:
    """The eye sphere and the trocar's cannula, world frame, m."""

    center: np.ndarray
    radius: float
    cannula_outer: np.ndarray  # the centre of the tube's outer end (the top of the hub)
    cannula_inner: np.ndarray  # the centre of its inner end, just inside the sclera
    cannula_radius: float

    def within_cannula(self, point: np.ndarray) -> bool:
        """Inside the tube: between its two ends and within its radius of its axis."""
        axis = self.cannula_inner - self.cannula_outer
        along = float(np.dot(point - self.cannula_outer, axis) / np.dot(axis, axis))
        radial = point - (self.cannula_outer + along * axis)
        return 0.0 <= along <= 1.0 and float(np.linalg.norm(radial)) <= self.cannula_radius


def penetration_outside_trocar(base: np.ndarray, tip: np.ndarray, eye: EyeGeometry) -> float:
    """Depth (m) below the eye's surface that the needle from `base` to `tip` reaches after entering the eye
    beside the cannula; 0.0 when it is outside the eye or entered through the cannula."""
    direction = tip - base
    offset = base - eye.center
    # base + t * direction is inside the sphere where a t^2 + 2 b t + c <= 0.
    a = float(np.dot(direction, direction))
    b = float(np.dot(offset, direction))
    c = float(np.dot(offset, offset)) - eye.radius**2
    discriminant = b * b - a * c
    if discriminant <= 0.0:
        return 0.0  # the line misses the sphere or only touches it
    enters = (-b - np.sqrt(discriminant)) / a
    leaves = (-b + np.sqrt(discriminant)) / a
    if leaves <= 0.0 or enters >= 1.0:
        return 0.0  # the sphere lies beyond the tip or behind the base
    if eye.within_cannula(base + max(enters, 0.0) * direction):
        return 0.0
    nearest = float(np.clip(-b / a, 0.0, 1.0))  # the segment's point nearest to the centre (it lies inside)
    return eye.radius - float(np.linalg.norm(offset + nearest * direction))
