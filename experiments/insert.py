"""Nodules in-painted into a whole CT scan, written for a viewer.

  python -m experiments.insert --scan PATH --centre X,Y,Z [--voxel] --diameter MM
      --label malignant|benign --gan_workdir G --out OUT [--seed S] [--dicom_out DIR]
      [--centres FILE] [--pad] [--border_mm 3] [--series UID]

PATH: a DICOM series folder (checked as by data_prep), a NIfTI (.nii, .nii.gz) or a
MetaImage (.mhd, LUNA16's format). The centre is a physical point in mm in the scan's frame
(as SimpleITK and ITK-SNAP report it), or voxel indices with --voxel. --centres FILE: a CSV
with columns x, y, z and optionally diameter_mm and label, one nodule a row (--voxel
applies to it too). Writes OUT/scan.nii.gz (the scan with its original origin, spacing and
direction), OUT/nodule_mask.nii.gz (1 in-painted, 2 in-painted at -500 HU or more) and
OUT/insertions.json; with --dicom_out, a DICOM series that keeps the input's headers with
new UIDs. Everything is checked before anything is written; outputs appear whole or not at
all.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import csv  # noqa: E402

from absl import app, flags  # noqa: E402
from experiments import cli  # noqa: E402


REPORT = "insertions.json"
DICOM_MARKER = "nodule_jax_insertions.json"  # beside the DICOM files: what made them


def _floats(text: str, what: str) -> tuple[float, ...]:
  try:
    values = tuple(float(v) for v in text.split(","))
  except ValueError:
    values = ()
  if len(values) != 3:
    raise app.UsageError(f"{what}={text!r}: three numbers X,Y,Z")
  return values


def read_centres(path, diameter: float | None, label: str | None) -> list[dict]:
  """Rows of a centres CSV (x, y, z[, diameter_mm, label]) -> dicts, the flags filling the
  optional columns."""
  rows = []
  with open(path, newline="") as f:
    for n, row in enumerate(csv.DictReader(f), start=2):
      try:
        rows.append(dict(xyz=(float(row["x"]), float(row["y"]), float(row["z"])),
                         diameter=float(row.get("diameter_mm") or diameter),
                         label=(row.get("label") or label)))
      except (KeyError, TypeError, ValueError) as e:
        raise app.UsageError(f"{path} line {n}: needs x, y, z and a diameter_mm (column or "
                             f"--diameter): {e}")
  if not rows:
    raise app.UsageError(f"{path} has no rows")
  return rows


def run(scan_path, gan_workdir, out, requests: list[dict], voxel: bool = False, seed: int = 0,
        dicom_out=None, pad: bool = False, border_mm: float = 3.0, series_uid: str = ""
        ) -> list[dict]:
  """requests: dicts of xyz (mm or voxel indices), diameter (mm) and label (name).
  Returns one report per nodule."""
  import json

  import SimpleITK as sitk

  from data_prep.labels import CLASS_NAMES
  from data_prep.scan_io import read_scan, write_dicom_series
  from nodule_jax import atomic
  from nodule_jax.inpaint import load_generator
  from nodule_jax.inpaint import RequestError
  from nodule_jax.insert import Placement, describe, insert_nodules, physical_centre
  scan = read_scan(scan_path, series_uid)
  if dicom_out and not scan.slice_files:
    raise RequestError(f"--dicom_out needs a DICOM input; {scan_path} is not a DICOM series")
  for r in requests:
    if r["label"] not in CLASS_NAMES:
      raise RequestError(f"label {r['label']!r}; known: {', '.join(CLASS_NAMES)}")
  placements = [Placement(physical_centre(scan.image, r["xyz"]) if voxel else tuple(r["xyz"]),
                          float(r["diameter"]), CLASS_NAMES.index(r["label"]))
                for r in requests]
  config, models, g_params, step = load_generator(gan_workdir)
  image, labels, reports = insert_nodules(config, models, g_params, scan.image, placements,
                                          seed, border_mm, pad)
  summary = dict(scan=str(scan_path), gan_workdir=str(gan_workdir), gan_step=step, seed=seed,
                 border_mm=border_mm, nodules=reports)
  with atomic.directory(out, REPORT) as tmp:
    sitk.WriteImage(image, str(tmp / "scan.nii.gz"))
    sitk.WriteImage(labels, str(tmp / "nodule_mask.nii.gz"))
    (tmp / REPORT).write_text(json.dumps(summary, indent=1), encoding="utf-8")
  if dicom_out:
    with atomic.directory(dicom_out, DICOM_MARKER) as tmp:
      write_dicom_series(scan, sitk.GetArrayFromImage(image), tmp,
                         f"[synthetic: {len(reports)} nodule(s) in-painted by nodule_jax]")
      (tmp / DICOM_MARKER).write_text(json.dumps(summary, indent=1), encoding="utf-8")
  for r in reports:
    print(f"in-painted a {r['diameter_mm']:g} mm {r['label']} nodule at "
          f"{describe(r['centre_mm'])}: mean HU in its hole {r['mean_hu_in_hole_before']:.0f} "
          f"-> {r['mean_hu_in_hole_generated']:.0f} (generated, before the border fade)")
  print(f"wrote {out}/scan.nii.gz, nodule_mask.nii.gz, insertions.json"
        + (f" and the DICOM series {dicom_out}" if dicom_out else ""))
  return reports


def main(argv):
  del argv
  cli.quiet_logs()
  FLAGS = flags.FLAGS
  if bool(FLAGS.centre) == bool(FLAGS.centres):
    raise app.UsageError("give --centre X,Y,Z or --centres FILE")
  if FLAGS.centres:
    requests = read_centres(FLAGS.centres, FLAGS.diameter, FLAGS.label)
  else:
    if FLAGS.diameter is None:
      raise app.UsageError("--diameter is required with --centre")
    requests = [dict(xyz=_floats(FLAGS.centre, "--centre"), diameter=FLAGS.diameter,
                     label=FLAGS.label)]
  with cli.requests_as_usage_errors():  # one line, nothing written
    run(FLAGS.scan, FLAGS.gan_workdir, FLAGS.out, requests, FLAGS.voxel, FLAGS.seed,
        FLAGS.dicom_out or None, FLAGS.pad, FLAGS.border_mm, FLAGS.series)


def define_flags() -> None:
  """The flags of this entry point (defined when it runs, so that others can import it)."""
  flags.DEFINE_string("scan", None, "DICOM series folder, .nii(.gz) or .mhd.", required=True)
  flags.DEFINE_string("gan_workdir", None, "The GAN training workdir.", required=True)
  flags.DEFINE_string("out", None, "Output folder (scan.nii.gz, nodule_mask.nii.gz, "
                      "insertions.json).", required=True)
  flags.DEFINE_string("centre", "", "X,Y,Z of the nodule centre (mm, or voxels with --voxel).")
  flags.DEFINE_string("centres", "", "CSV of nodules: x, y, z[, diameter_mm, label].")
  flags.DEFINE_bool("voxel", False, "Centres are voxel indices (x, y, z), not mm.")
  flags.DEFINE_float("diameter", None, "Nodule diameter in mm.")
  flags.DEFINE_enum("label", "malignant", ["malignant", "benign"], "The class to paint.")
  flags.DEFINE_integer("seed", 0, "Seed of the holes and noise (nodule i: stream i).")
  flags.DEFINE_string("dicom_out", "", "Also write a DICOM series here (DICOM input only).")
  flags.DEFINE_bool("pad", False, "Allow points nearer the edge than half a patch (air "
                    "fills the part of the patch outside the scan).")
  flags.DEFINE_float("border_mm", 3.0, "The change fades to zero over this depth inside the "
                     "hole's edge.", lower_bound=0.0)
  flags.DEFINE_string("series", "", "The series UID, when a DICOM folder holds several.")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
