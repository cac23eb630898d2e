"""Reading one CT series from an LIDC-IDRI root into a checked, HU-valued volume.

Layouts: pylidc's older `ROOT/LIDC-IDRI-dddd/StudyUID/SeriesUID/*.dcm` and TCIA's
`ROOT/LIDC-IDRI-dddd/<study folder>/<series folder>/*.dcm` (found by the series UID).
Headers and pixels are read (and validated) with pydicom; the volume is handed on as a
SimpleITK image for resampling.
"""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import pydicom
import SimpleITK as sitk


DUPLICATE_POLICIES = ("error", "identical", "lowest_instance")


class ScanError(Exception):
  """A scan that cannot be used; the message names the scan and the reason."""


@dataclasses.dataclass
class Volume:
  """hu: [D, H, W] float32 Hounsfield units, slices sorted by ascending z.

  origin: (x, y, z) mm of voxel [0, 0, 0]; spacing: (x, y, z) mm.
  """
  hu: np.ndarray
  origin: tuple[float, float, float]
  spacing: tuple[float, float, float]

  def to_sitk(self) -> sitk.Image:
    image = sitk.GetImageFromArray(self.hu)
    image.SetOrigin(self.origin)
    image.SetSpacing(self.spacing)
    return image


def find_series_dir(lidc_dir, patient_id: str, study_uid: str, series_uid: str) -> pathlib.Path:
  """The folder that holds the series' DICOM files, in either layout."""
  base = pathlib.Path(lidc_dir) / patient_id
  if not base.is_dir():
    raise ScanError(f"{patient_id}: no folder {base}")
  old_layout = base / study_uid / series_uid
  if old_layout.is_dir():
    return old_layout
  for folder in sorted({p.parent for p in base.rglob("*.dcm")}):
    first = next(folder.glob("*.dcm"))
    try:
      header = pydicom.dcmread(first, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
    except Exception:  # an unreadable file is reported when its series is read
      continue
    if str(header.get("SeriesInstanceUID", "")).strip() == series_uid:
      return folder
  raise ScanError(f"{patient_id}: no DICOM series with SeriesInstanceUID {series_uid} "
                  f"under {base}")


def series_origin_xy(lidc_dir, patient_id: str, study_uid: str, series_uid: str
                     ) -> tuple[float, float]:
  """(x, y) mm of the series' first voxel, from one slice header (no pixels read)."""
  folder = find_series_dir(lidc_dir, patient_id, study_uid, series_uid)
  for path in sorted(folder.glob("*.dcm")):
    try:
      ds = pydicom.dcmread(path, stop_before_pixels=True,
                           specific_tags=["SeriesInstanceUID", "ImagePositionPatient"])
      if str(ds.SeriesInstanceUID).strip() == series_uid:
        return float(ds.ImagePositionPatient[0]), float(ds.ImagePositionPatient[1])
    except Exception:  # try the next file; read_series reports broken ones
      continue
  raise ScanError(f"{patient_id}: no readable header of series {series_uid} in {folder}")


def read_series(folder, series_uid: str, name: str = "", duplicates: str = "error") -> Volume:
  """Reads, validates and stacks the series' slices. Raises ScanError naming the problem.

  duplicates: what to do with two slices at one z position — "error"; "identical": drop
  copies with the same HU pixels, error if they differ; "lowest_instance": keep the slice
  with the lower InstanceNumber (pylidc's choice in `Scan.load_all_dicom_images`).
  """
  if duplicates not in DUPLICATE_POLICIES:
    raise ValueError(f"duplicates must be one of {DUPLICATE_POLICIES}, got {duplicates!r}")
  name = name or str(folder)
  slices = []
  for path in sorted(pathlib.Path(folder).glob("*.dcm")):
    try:
      ds = pydicom.dcmread(path)
      if str(ds.SeriesInstanceUID).strip() != series_uid:
        continue
      hu = _hu(ds, ds.pixel_array)
    except Exception as e:  # pydicom raises many types for broken files
      raise ScanError(f"{name}: unreadable DICOM file {path.name}: {e}") from e
    slices.append((ds, hu, str(path)))
  if not slices:
    raise ScanError(f"{name}: no slices of series {series_uid} in {folder}")
  _check_axial(slices, name)
  slices.sort(key=lambda s: float(s[0].ImagePositionPatient[2]))
  if duplicates != "error":
    slices = _drop_duplicates(slices, duplicates, name)
  z = np.array([float(s[0].ImagePositionPatient[2]) for s in slices])
  dz = _check_z(z, [s[2] for s in slices], name)
  first = slices[0][0]
  row_mm, col_mm = (float(v) for v in first.PixelSpacing)
  origin = tuple(float(v) for v in first.ImagePositionPatient)
  return Volume(np.stack([hu for _, hu, _ in slices]), origin, (col_mm, row_mm, dz))


def _hu(ds, pixels: np.ndarray) -> np.ndarray:
  """[H, W] stored values -> float32 Hounsfield units (rescale slope and intercept)."""
  return (pixels.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1))
          + float(getattr(ds, "RescaleIntercept", 0)))


def _drop_duplicates(slices: list, policy: str, name: str) -> list:
  """Slices sorted by z -> one slice per z position, by `policy` (see `read_series`)."""
  z = lambda s: float(s[0].ImagePositionPatient[2])
  kept = []
  for s in slices:
    if not kept or abs(z(s) - z(kept[-1])) >= 1e-3:
      kept.append(s)
    elif policy == "identical" and not np.array_equal(kept[-1][1], s[1]):
      raise ScanError(f"{name}: duplicate slice position z={z(s):.2f} mm with different pixel "
                      f"data ({pathlib.Path(kept[-1][2]).name}, {pathlib.Path(s[2]).name})")
    elif policy == "lowest_instance" and int(s[0].InstanceNumber) < int(kept[-1][0].InstanceNumber):
      kept[-1] = s
  return kept


def _check_axial(slices, name: str) -> None:
  first = slices[0][0]
  shape = (first.Rows, first.Columns)
  for ds, _, path in slices:
    if not np.allclose([float(v) for v in ds.ImageOrientationPatient], [1, 0, 0, 0, 1, 0],
                       atol=1e-3):
      raise ScanError(f"{name}: {pathlib.Path(path).name} is not axial "
                      f"(ImageOrientationPatient {list(ds.ImageOrientationPatient)})")
    if (ds.Rows, ds.Columns) != shape or not np.allclose(
        [float(v) for v in ds.PixelSpacing], [float(v) for v in first.PixelSpacing]):
      raise ScanError(f"{name}: inconsistent matrix size or pixel spacing in "
                      f"{pathlib.Path(path).name}")


def _check_z(z: np.ndarray, paths: list[str], name: str) -> float:
  """Slice spacing of sorted positions `z`; errors on duplicates, gaps and irregularity."""
  if len(z) < 2:
    raise ScanError(f"{name}: a series needs at least two slices, found {len(z)}")
  dz = np.diff(z)
  dup = np.flatnonzero(dz < 1e-3)
  if dup.size:
    i = dup[0]
    raise ScanError(f"{name}: duplicate slice position z={z[i]:.2f} mm "
                    f"({pathlib.Path(paths[i]).name}, {pathlib.Path(paths[i + 1]).name}); "
                    "--duplicate_slices=identical or lowest_instance keeps such scans")
  step = float(np.median(dz))
  gap = np.flatnonzero(dz > 1.5 * step)
  if gap.size:
    i = gap[0]
    raise ScanError(f"{name}: missing slice(s): gap of {dz[i]:.2f} mm between z={z[i]:.2f} "
                    f"and z={z[i + 1]:.2f} mm where the spacing is {step:.2f} mm")
  if np.any(np.abs(dz - step) > 0.1 * step):
    i = int(np.argmax(np.abs(dz - step)))
    raise ScanError(f"{name}: inconsistent slice spacing: {dz[i]:.3f} mm at z={z[i]:.2f} mm, "
                    f"{step:.3f} mm elsewhere")
  return step
