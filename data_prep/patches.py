"""Nodule patches: 64×64×32 voxels at 1×1×2 mm (x, y, z) around the nodule centre.

Arrays are [D, H, W] = [32, 64, 64]; the nodule centre sits at voxel (15.5, 31.5, 31.5).
Voxels outside the scan read -1000 HU, so nodules at the volume edge still give full patches.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk

from data_prep.volumes import Volume

PATCH_SIZE_XYZ = (64, 64, 32)
PATCH_SPACING_XYZ = (1.0, 1.0, 2.0)
PATCH_SHAPE = PATCH_SIZE_XYZ[::-1]  # [D, H, W]
AIR_HU = -1000


def _resample(image: sitk.Image, centre_mm: Sequence[float], default: float) -> np.ndarray:
  """Linear resampling of `image` onto the patch grid centred at `centre_mm` -> [D, H, W]."""
  spacing = np.array(PATCH_SPACING_XYZ)
  origin = np.asarray(centre_mm, float) - (np.array(PATCH_SIZE_XYZ) - 1) / 2 * spacing
  out = sitk.Resample(image, PATCH_SIZE_XYZ, sitk.Transform(), sitk.sitkLinear,
                      origin.tolist(), spacing.tolist(), (1, 0, 0, 0, 1, 0, 0, 0, 1),
                      default, sitk.sitkFloat32)
  return sitk.GetArrayFromImage(out)


def extract_patch(volume_image: sitk.Image, centre_mm: Sequence[float]) -> np.ndarray:
  """int16 HU patch [32, 64, 64] centred at `centre_mm` (x, y, z)."""
  hu = _resample(volume_image, centre_mm, AIR_HU)
  return np.clip(np.rint(hu), -32768, 32767).astype(np.int16)


def consensus_image(cmask: np.ndarray, bbox: tuple[slice, slice, slice], volume: Volume,
                    pixel_spacing_mm: float, slice_zvals: Sequence[float]) -> sitk.Image:
  """pylidc's consensus mask (rows, cols, k) within `bbox` as a float image in patient mm."""
  zvals = np.asarray(slice_zvals, float)
  k0 = bbox[2].start
  dz = float(np.median(np.diff(zvals))) if len(zvals) > 1 else PATCH_SPACING_XYZ[2]
  image = sitk.GetImageFromArray(np.transpose(cmask, (2, 0, 1)).astype(np.float32))
  image.SetSpacing((pixel_spacing_mm, pixel_spacing_mm, dz))
  image.SetOrigin((volume.origin[0] + bbox[1].start * pixel_spacing_mm,
                   volume.origin[1] + bbox[0].start * pixel_spacing_mm, float(zvals[k0])))
  return image


def extract_mask(mask_image: sitk.Image, centre_mm: Sequence[float]) -> np.ndarray:
  """uint8 mask [32, 64, 64]: 1 where at least half of a patch voxel is inside."""
  return (_resample(mask_image, centre_mm, 0.0) >= 0.5).astype(np.uint8)


def patch_image(hu: np.ndarray, centre_mm: Sequence[float]) -> sitk.Image:
  """A patch [32, 64, 64] as a SimpleITK image in patient mm (1×1×2 mm, centred at
  `centre_mm`, axial orientation): the inverse placement of `extract_patch`."""
  image = sitk.GetImageFromArray(np.asarray(hu))
  image.SetSpacing(PATCH_SPACING_XYZ)
  image.SetOrigin([float(c) - (n - 1) / 2 * s
                   for c, n, s in zip(centre_mm, PATCH_SIZE_XYZ, PATCH_SPACING_XYZ)])
  return image
