"""Nodules in-painted into whole CT scans, on the scan's own grid.

For each requested nodule: the 64×64×32 patch at 1×1×2 mm around the point is resampled
from the scan, a spherical hole of the requested size on its centre is in-painted as the
requested class, and only the change (in-painted minus original, zero outside the hole),
faded to zero over a border inside the hole's edge, is resampled (linear) onto the scan's
grid and added. Voxels the change does not reach keep their exact values.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from data_prep.labels import CLASS_NAMES
from data_prep.patches import PATCH_SIZE_XYZ, PATCH_SPACING_XYZ, extract_patch, patch_image
from nodule_jax.inpaint import (RequestError, check_diameter, crop_batch, inpaint, paste,
                                working_shape)
from nodule_jax.intensity import hu_to_unit
from nodule_jax.nodule_ratings import request_ratings, training_nodules
from nodule_jax.rng import Stream, stream_key
from nodule_jax.synthesis_metrics import to_hu

AIR_MEAN_HU = -950.0    # a hole whose mean is below this is outside the body
NODULE_HU = -500.0      # in-painted voxels at or above this are labelled nodule (2)


@dataclasses.dataclass(frozen=True)
class Placement:
  """centre_mm: (x, y, z) physical point in the scan's frame (as SimpleITK reports it)."""
  centre_mm: tuple[float, float, float]
  diameter_mm: float
  label: int


def physical_centre(image: sitk.Image, voxel_xyz: Sequence[float]) -> tuple[float, float, float]:
  """Voxel indices (x, y, z; fractions allowed) -> the physical point."""
  return tuple(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in voxel_xyz]))


def _patch_corners(centre_mm) -> np.ndarray:
  """[8, 3] physical corners of the patch (the outermost voxel centres) around `centre_mm`."""
  half = (np.array(PATCH_SIZE_XYZ) - 1) / 2 * np.array(PATCH_SPACING_XYZ)
  signs = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)])
  return np.asarray(centre_mm) + signs * half


def _inside(image: sitk.Image, points, tolerance: float = 0.5) -> bool:
  size = np.array(image.GetSize())
  for p in points:
    index = np.array(image.TransformPhysicalPointToContinuousIndex([float(v) for v in p]))
    if np.any(index < -tolerance) or np.any(index > size - 1 + tolerance):
      return False
  return True


def describe(centre_mm) -> str:
  return f"({', '.join(f'{v:.1f}' for v in centre_mm)}) mm"


def check_placement(image: sitk.Image, placement: Placement, max_diameter_mm: float,
                    pad: bool = False) -> None:
  """RequestError for a point outside the volume, closer to its edge than half a patch
  (unless `pad`: the patch is filled with air there), or a size the GAN was not trained on."""
  p = placement
  check_diameter(p.diameter_mm, max_diameter_mm)
  if p.label not in (0, 1):
    raise RequestError(f"label {p.label!r}; known: 0 (benign), 1 (malignant)")
  where = f"the point {describe(p.centre_mm)}"
  if not _inside(image, [p.centre_mm]):
    raise RequestError(f"{where} is outside the volume (origin {image.GetOrigin()}, size "
                     f"{image.GetSize()}, spacing {image.GetSpacing()})")
  if not pad and not _inside(image, _patch_corners(p.centre_mm)):
    raise RequestError(f"{where} is closer to the volume's edge than half a patch "
                     f"({PATCH_SIZE_XYZ[0] * PATCH_SPACING_XYZ[0] / 2:g} mm in x and y, "
                     f"{PATCH_SIZE_XYZ[2] * PATCH_SPACING_XYZ[2] / 2:g} mm in z); --pad fills "
                     "the missing part of the patch with air")


def soft_weight(hole: np.ndarray, border_mm: float) -> np.ndarray:
  """hole [D, H, W] bool (1×1×2 mm voxels) -> weight in [0, 1]: 1 deeper than `border_mm`
  inside the hole, falling linearly to 0 at its edge, 0 outside."""
  if border_mm <= 0:
    return hole.astype(np.float32)
  depth = ndimage.distance_transform_edt(hole, sampling=PATCH_SPACING_XYZ[::-1])
  return np.clip(depth / border_mm, 0, 1).astype(np.float32)


def _region(image: sitk.Image, centre_mm) -> tuple[slice, slice, slice]:
  """(x, y, z) index slices of the scan voxels the patch around `centre_mm` can touch."""
  index = np.array([image.TransformPhysicalPointToContinuousIndex([float(v) for v in c])
                    for c in _patch_corners(centre_mm)])
  lo = np.maximum(np.floor(index.min(0)).astype(int) - 1, 0)
  hi = np.minimum(np.ceil(index.max(0)).astype(int) + 2, image.GetSize())
  return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _on_scan_grid(patch: np.ndarray, centre_mm, reference: sitk.Image) -> np.ndarray:
  """A float patch [32, 64, 64] placed at `centre_mm`, linearly resampled onto the grid of
  `reference` -> [z, y, x] array (0 outside the patch)."""
  moved = sitk.Resample(patch_image(patch.astype(np.float32), centre_mm), reference,
                        sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
  return sitk.GetArrayFromImage(moved)


def insert_nodules(config, models, g_params, image: sitk.Image, placements: Sequence[Placement],
                   seed: int = 0, border_mm: float = 3.0, pad: bool = False
                   ) -> tuple[sitk.Image, sitk.Image, list[dict]]:
  """In-paints each placement (in order) into `image` (HU).

  Returns (the scan with the same pixel type and geometry, a uint8 label image on its grid:
  1 in-painted, 2 in-painted at or above NODULE_HU; one dict per nodule, with the texture
  and calcification ratings drawn for a GAN conditioned on them). The placements
  are checked before any in-painting; a hole in air (mean below AIR_MEAN_HU) is a
  RequestError once its nodule is in-painted (nothing is returned, so nothing is written).
  """
  max_d = float(config.mask.max_diameter_mm)
  for p in placements:
    check_placement(image, p, max_d, pad)
  config = config.copy_and_resolve_references()
  config.mask.shift_mm = 0.0  # the hole is centred on the requested point
  run = jax.jit(functools.partial(inpaint, config, models))
  nodules = training_nodules(config)   # a GAN conditioned on ratings draws them
  hu = sitk.GetArrayFromImage(image).astype(np.float32)        # [z, y, x]
  labels = np.zeros(hu.shape, np.uint8)
  reports = []
  for i, p in enumerate(placements):
    x, y, z = _region(image, p.centre_mm)   # only the scan voxels the patch can touch
    reference = _like(hu[z, y, x], image[x, y, z], np.float32)
    real = extract_patch(reference, p.centre_mm).astype(np.float32)       # [32, 64, 64]
    batch = {"image": hu_to_unit(real)[None, ..., None],
             "mask": np.zeros((1, *real.shape, 1), np.float32),  # no nodule: a sphere on the
                                                                  # centre (an input, not a
                                                                  # constant XLA would fold)
             "label": np.array([p.label], np.int32),
             "diameter_mm": np.array([p.diameter_mm], np.float32)}
    key = stream_key(seed, Stream.INSERTION, i)
    ratings = request_ratings(key, nodules, batch["label"], batch["diameter_mm"])
    out = jax.device_get(run(g_params, crop_batch(batch, working_shape(config)), key,
                             None, None, None, ratings))
    made, hole = (a[0] for a in paste(real[None], to_hu(out["fake"][..., 0]).astype(np.float32),
                                      out["mask"][..., 0] > 0))
    mean_in_hole = float(real[hole].mean())
    if mean_in_hole < AIR_MEAN_HU:
      raise RequestError(f"nodule {i} at {describe(p.centre_mm)} is in air outside the body "
                         f"(mean {mean_in_hole:.0f} HU in its hole, below {AIR_MEAN_HU:g})")
    change = _on_scan_grid((made - real) * soft_weight(hole, border_mm), p.centre_mm, reference)
    inside = _on_scan_grid(hole.astype(np.float32), p.centre_mm, reference) >= 0.5
    part = hu[z, y, x]
    part += change
    labels[z, y, x] = np.maximum(labels[z, y, x], np.where(
        inside, np.where(part >= NODULE_HU, 2, 1), 0).astype(np.uint8))
    reports.append(dict(centre_mm=list(p.centre_mm), diameter_mm=p.diameter_mm,
                        label=CLASS_NAMES[p.label], hole_voxels_patch=int(hole.sum()),
                        scan_voxels_changed=int(np.count_nonzero(change)),
                        mean_hu_in_hole_before=mean_in_hole,
                        mean_hu_in_hole_generated=float(made[hole].mean()), key_index=i,
                        **({} if ratings is None else dict(zip(
                            ("texture", "calcification"), np.asarray(ratings)[0].tolist())))))
  return _like(hu, image), _like(labels, image, np.uint8), reports


def _like(values: np.ndarray, image: sitk.Image, dtype=None) -> sitk.Image:
  """values [z, y, x] -> an image with `image`'s geometry, of `dtype` (default: `image`'s
  pixel type; rounded and clipped for integers)."""
  dtype = np.dtype(dtype or sitk.GetArrayViewFromImage(image).dtype)
  if np.issubdtype(dtype, np.integer):
    info = np.iinfo(dtype)
    values = np.clip(np.rint(values), info.min, info.max)
  out = sitk.GetImageFromArray(values.astype(dtype))
  out.CopyInformation(image)
  return out
