"""A synthetic chest in Hounsfield units on a scan's real grid (the phantom's background).

Air outside an elliptical body, fat under the skin, muscle, ribs and spine, a mediastinum,
and two lungs at about -850 HU with low-frequency texture and vessel-like tubes (voxels
near the zero sets of two smooth random fields).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

AIR, FAT, MUSCLE, BONE, LUNG, VESSEL = -1000.0, -100.0, 40.0, 650.0, -850.0, 30.0


def _smooth_field(rng, shape, spacing_mm, scale_mm) -> np.ndarray:
  """Unit-variance random field [D, H, W] correlated over ~`scale_mm`, made coarse then zoomed."""
  step = np.maximum(np.asarray(spacing_mm, float), scale_mm / 2)
  coarse = [max(4, int(np.ceil(n * s / t)) + 2) for n, s, t in zip(shape, spacing_mm, step)]
  field = ndimage.gaussian_filter(rng.standard_normal(coarse), 1.0)
  field = ndimage.zoom(field, [n / c for n, c in zip(shape, coarse)], order=1)[
      :shape[0], :shape[1], :shape[2]]
  return (field - field.mean()) / (field.std() + 1e-6)


def synthetic_chest(shape: Sequence[int], spacing_xyz: Sequence[float],
                    lung_centres_mm: Sequence[tuple[float, float, float, float]],
                    rng: np.random.Generator) -> np.ndarray:
  """HU volume [D, H, W] float32 on a grid centred in-plane on the field of view.

  Args:
    shape: (D, H, W).
    spacing_xyz: voxel size in mm.
    lung_centres_mm: (x, y, z, radius) spheres, relative to the in-plane FOV centre, that must
      be lung parenchyma (where the real nodules are), whatever the ellipses say.
  """
  d, h, w = shape
  sx, sy, sz = spacing_xyz
  z = (np.arange(d) * sz)[:, None, None]
  y = ((np.arange(h) - (h - 1) / 2) * sy)[None, :, None]
  x = ((np.arange(w) - (w - 1) / 2) * sx)[None, None, :]
  fov = min(h * sy, w * sx)
  t = np.clip((z - z.min()) / max(float(np.ptp(z)), 1.0), 0, 1)
  ax, ay = 0.46 * fov, 0.33 * fov
  body = (x / ax) ** 2 + (y / ay) ** 2
  vol = np.where(body <= 1, MUSCLE, AIR).astype(np.float32)
  vol = np.where((body > 0.84) & (body <= 1), FAT, vol)
  ang = np.arctan2(y, x)
  ribs = (body > 0.68) & (body <= 0.76) & (np.sin(10 * ang + z / 9.0) > 0.2)
  vol = np.where(ribs, BONE, vol)
  spine = (x / (0.06 * fov)) ** 2 + ((y - 0.24 * fov) / (0.06 * fov)) ** 2 <= 1
  vol = np.where(spine, BONE, vol)
  scale = 0.6 + 0.4 * np.sqrt(np.sin(np.pi * (0.1 + 0.85 * t)))
  lungs = np.zeros(shape, bool)
  for side in (-1, 1):
    lungs |= ((x - side * 0.2 * fov) / (0.15 * fov * scale)) ** 2 + (
        (y + 0.02 * fov) / (0.24 * fov * scale)) ** 2 <= 1
  for cx, cy, cz, r in lung_centres_mm:
    lungs |= (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= r ** 2
  texture = 25 * _smooth_field(rng, shape, (sz, sy, sx), 12.0)
  n1 = _smooth_field(rng, shape, (sz, sy, sx), 16.0)
  n2 = _smooth_field(rng, shape, (sz, sy, sx), 16.0)
  tube = np.clip(1 - np.sqrt(n1 ** 2 + n2 ** 2) / 0.25, 0, 1)  # partial-volume vessel profile
  lung_hu = LUNG + texture + (VESSEL - LUNG) * tube
  soft = (0, 0.7, 0.7)  # partial-volume edges in-plane
  vol = ndimage.gaussian_filter(vol, soft)
  lung_frac = ndimage.gaussian_filter(lungs.astype(np.float32), soft)
  vol = vol * (1 - lung_frac) + lung_hu * lung_frac
  vol += rng.normal(0, 12, shape).astype(np.float32) * (vol > AIR + 1)
  return vol.astype(np.float32)
