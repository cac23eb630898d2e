"""Whole CT scans in and out: a DICOM series folder, NIfTI or MetaImage (LUNA16's `.mhd`).

A scan is a SimpleITK image of Hounsfield units (its origin, spacing and direction are the
file's); a DICOM series also keeps its slice files, so that a derived series can be written
with every header of the input.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Sequence

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.uid import generate_uid

from data_prep.volumes import ScanError, read_series

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".mhd", ".mha", ".nrrd")


@dataclasses.dataclass
class Scan:
  """image: HU (DICOM: int16 when every value is a whole HU, float32 otherwise; other
  formats: the file's pixel type); slice_files: the DICOM files in the image's slice order
  (empty for other formats)."""
  image: sitk.Image
  slice_files: list[pathlib.Path] = dataclasses.field(default_factory=list)


def read_scan(path, series_uid: str = "") -> Scan:
  """A DICOM series folder (checked as in data_prep: readable, axial, no missing or
  duplicate slice; one series, or `series_uid`), or an image file SimpleITK reads."""
  path = pathlib.Path(path)
  if not path.exists():
    raise ScanError(f"{path} does not exist")
  if path.is_dir():
    return _read_dicom(path, series_uid)
  if not str(path).lower().endswith(IMAGE_SUFFIXES):
    raise ScanError(f"{path}: not a DICOM folder nor one of {', '.join(IMAGE_SUFFIXES)}")
  try:
    image = sitk.ReadImage(str(path))
  except RuntimeError as e:
    raise ScanError(f"{path}: unreadable image: {str(e).strip().splitlines()[-1]}") from e
  if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
    raise ScanError(f"{path}: a 3-D single-channel image is needed, got "
                    f"{image.GetDimension()}-D with {image.GetNumberOfComponentsPerPixel()} "
                    "channel(s)")
  return Scan(image)


def _series_uids(files: Sequence[pathlib.Path]) -> dict[str, list[pathlib.Path]]:
  """Series UID -> its files sorted by z (one header read per file, no pixels)."""
  uids: dict[str, list[tuple[float, pathlib.Path]]] = {}
  for f in files:
    try:
      ds = pydicom.dcmread(f, stop_before_pixels=True,
                           specific_tags=["SeriesInstanceUID", "ImagePositionPatient"])
      z = float(ds.ImagePositionPatient[2]) if "ImagePositionPatient" in ds else 0.0
      uids.setdefault(str(ds.SeriesInstanceUID).strip(), []).append((z, f))
    except Exception as e:  # pydicom raises many types for broken files
      raise ScanError(f"{f}: unreadable DICOM file: {e}") from e
  return {uid: [f for _, f in sorted(pairs)] for uid, pairs in uids.items()}


def _read_dicom(folder: pathlib.Path, series_uid: str) -> Scan:
  uids = _series_uids(sorted(folder.glob("*.dcm")))
  if not uids:
    raise ScanError(f"{folder}: no DICOM files (*.dcm)")
  if not series_uid:
    if len(uids) > 1:
      raise ScanError(f"{folder} mixes {len(uids)} series ("
                      + ", ".join(f"{u}: {len(v)} files" for u, v in uids.items())
                      + "): choose one with --series")
    series_uid = next(iter(uids))
  elif series_uid not in uids:
    raise ScanError(f"{folder}: no series {series_uid} (it has {', '.join(uids)})")
  volume = read_series(folder, series_uid, name=str(folder))  # checks and sorts by z too
  if np.array_equal(volume.hu, np.rint(volume.hu)) and np.abs(volume.hu).max() < 2 ** 15:
    volume.hu = volume.hu.astype(np.int16)  # whole HU (slope 1): keep them as integers
  return Scan(volume.to_sitk(), uids[series_uid])


def write_dicom_series(scan: Scan, hu: np.ndarray, out_dir, description: str) -> list[pathlib.Path]:
  """A derived copy of `scan`'s DICOM series with the HU volume `hu` [D, H, W] (the scan's
  slice order): every header kept except new Series and SOP Instance UIDs, ImageType
  DERIVED\\SECONDARY, `description` appended to SeriesDescription; pixels re-encoded with
  each slice's rescale slope and intercept (uncompressed). Returns the files written."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  series = generate_uid()
  written = []
  for k, src in enumerate(scan.slice_files):
    ds = pydicom.dcmread(src)
    slope, intercept = float(getattr(ds, "RescaleSlope", 1)), float(getattr(ds, "RescaleIntercept", 0))
    dtype = np.int16 if int(ds.PixelRepresentation) else np.uint16
    info = np.iinfo(dtype)
    stored = np.clip(np.rint((hu[k] - intercept) / slope), info.min, info.max).astype(dtype)
    # Native (uncompressed) pixels whatever the input's transfer syntax.
    ds.set_pixel_data(stored, "MONOCHROME2", 16, generate_instance_uid=False)
    ds.SeriesInstanceUID = series
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.ImageType = ["DERIVED", "SECONDARY", *list(getattr(ds, "ImageType", ["", ""]))[2:]]
    ds.SeriesDescription = f"{getattr(ds, 'SeriesDescription', '')} {description}".strip()[-64:]
    ds.DerivationDescription = description[:1024]
    path = out / f"{k + 1:04d}.dcm"
    ds.save_as(path, enforce_file_format=True)
    written.append(path)
  return written
