"""Smooth random fields and implicit shapes, evaluated at physical coordinates (mm).

Everything here is a pure function of a NumPy ``Generator`` and coordinate arrays, so phantoms are
independent of the voxel grid they are sampled on: the same patient rendered at 0.7 mm or 3 mm, or
with a flipped direction matrix, has the same anatomy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FourierField:
    """A smooth random field: a sum of a few plane waves with random directions and phases.

    Evaluates to roughly unit standard deviation; ``wavelength_mm`` bounds the feature size.
    """

    wavevectors: np.ndarray  # (K, 3) in rad/mm
    phases: np.ndarray  # (K,)
    amplitudes: np.ndarray  # (K,)

    @classmethod
    def random(cls, rng: np.random.Generator, n_modes: int = 6, wavelength_mm: tuple[float, float] = (40.0, 120.0)
               ) -> FourierField:
        directions = rng.normal(size=(n_modes, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        wavelengths = rng.uniform(*wavelength_mm, size=n_modes)
        amplitudes = rng.uniform(0.5, 1.0, size=n_modes)
        amplitudes *= np.sqrt(2.0 / np.sum(amplitudes**2))  # unit variance for independent sinusoids
        return cls(directions * (2 * np.pi / wavelengths)[:, None], rng.uniform(0, 2 * np.pi, n_modes), amplitudes)

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        out = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), dtype=np.float32)
        for (kx, ky, kz), phase, amp in zip(self.wavevectors, self.phases, self.amplitudes, strict=True):
            out += np.float32(amp) * np.sin(np.float32(kx) * x + np.float32(ky) * y + np.float32(kz) * z
                                            + np.float32(phase))
        return out


def rotation_matrix(rng: np.random.Generator, max_angle_deg: float) -> np.ndarray:
    """A random rotation of at most ``max_angle_deg`` about a random axis (Rodrigues' formula)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(-max_angle_deg, max_angle_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def ellipsoid_level(x: np.ndarray, y: np.ndarray, z: np.ndarray, centre, radii, rotation: np.ndarray | None = None
                    ) -> np.ndarray:
    """Normalised squared radius of an ellipsoid: < 1 inside, 1 on the surface.

    ``rotation`` maps the ellipsoid's own axes to patient axes (its columns are the axes).
    """
    dx, dy, dz = (x - np.float32(centre[0])), (y - np.float32(centre[1])), (z - np.float32(centre[2]))
    if rotation is not None:
        r = rotation.astype(np.float32)
        dx, dy, dz = (r[0, 0] * dx + r[1, 0] * dy + r[2, 0] * dz,
                      r[0, 1] * dx + r[1, 1] * dy + r[2, 1] * dz,
                      r[0, 2] * dx + r[1, 2] * dy + r[2, 2] * dz)
    return (dx / np.float32(radii[0])) ** 2 + (dy / np.float32(radii[1])) ** 2 + (dz / np.float32(radii[2])) ** 2


def capsule_distance(points: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Distance (mm) from ``(N, 3)`` points to the segment ``start``-``end``."""
    seg = end - start
    t = np.clip(((points - start) @ seg) / max(float(seg @ seg), 1e-9), 0.0, 1.0)
    return np.linalg.norm(points - (start + t[:, None] * seg), axis=1)
