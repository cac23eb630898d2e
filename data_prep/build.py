"""LIDC-IDRI (or the phantom) -> labelled nodule patches -> TFRecord shards.

  python -m data_prep.build --lidc_dir DIR --data_dir OUT [--workers N] [label options]
                           [--beam_pipeline_options="runner=...,key=value"]

Patches are cached per scan in OUT/patches/ (a re-run, or one with another label rule,
reuses them); scans that fail are listed with the reason in OUT/failures.tsv and the build
goes on; the shards are rewritten from the cache each run. With --beam_pipeline_options the
scans are extracted and the shards written by Apache Beam pipelines (data_prep/beam_build.py).
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import functools
import json
import multiprocessing
import pathlib
from typing import Sequence

from tqdm import tqdm

from data_prep.extract import extract_to_file, patch_file
from data_prep.labels import LabelRule
from data_prep.nodules import Nodule, load_nodules
from data_prep.selection import LabelledNodule, format_table1, label_and_split
from data_prep.volumes import DUPLICATE_POLICIES
from nodule_jax import atomic


def extract_all(lidc_dir: str, nodules: Sequence[Nodule], patch_dir: pathlib.Path,
                workers: int | None, progress: bool = True, duplicates: str = "error",
                beam_options=None) -> dict[str, str]:
  """Extracts every scan not yet cached, in a process pool or (given Beam's PipelineOptions)
  a Beam pipeline; returns {series_uid: error} of those that failed."""
  by_series = collections.defaultdict(list)
  for n in nodules:
    by_series[n.series_uid].append(n)
  todo = {uid: ns for uid, ns in by_series.items() if not patch_file(patch_dir, uid).exists()}
  failures = {}
  if not todo:
    return failures
  if beam_options is not None:
    from data_prep import beam_build
    return beam_build.extract_all(lidc_dir, todo, patch_dir, beam_options, duplicates)
  ctx = multiprocessing.get_context("spawn")
  with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
    futures = {pool.submit(extract_to_file, lidc_dir, ns, str(patch_dir), duplicates): uid
               for uid, ns in sorted(todo.items())}
    for fut in tqdm(cf.as_completed(futures), total=len(futures), desc="extracting patches",
                    unit="scan", disable=not progress):
      error = fut.result()
      if error:
        failures[futures[fut]] = error
        tqdm.write(f"FAILED {error}")
  return failures


def build(lidc_dir: str, data_dir: str, rule: LabelRule = LabelRule(), seed: int = 0,
          fractions: Sequence[float] = (0.8, 0.1, 0.1), patient_ids: Sequence[str] | None = None,
          workers: int | None = None, progress: bool = True,
          duplicate_slices: str = "error", beam_pipeline_options: str | None = None
          ) -> list[LabelledNodule]:
  """Builds the shards under `data_dir`; returns the entries written.

  duplicate_slices: see `volumes.read_series`; it applies to scans not yet cached.
  beam_pipeline_options: "key=value,..." runs extraction and shard writing as Beam
    pipelines ("" for Beam's defaults: the DirectRunner); None, the local build.
  """
  from data_prep.tfds_builder import by_series, labelled_examples, write_shards
  beam_options = None
  if beam_pipeline_options is not None:
    from data_prep import beam_build
    beam_options = beam_build.pipeline_options(beam_pipeline_options)
  patient_ids = _patients(lidc_dir, patient_ids)
  out = pathlib.Path(data_dir)
  patch_dir = out / "patches"
  patch_dir.mkdir(parents=True, exist_ok=True)
  nodules = load_nodules(patient_ids, workers=workers, progress=progress)
  failures = extract_all(lidc_dir, nodules, patch_dir, workers, progress, duplicate_slices,
                         beam_options)
  _write_failures(out / "failures.tsv", failures, patch_dir)
  ok = [n for n in nodules if patch_file(patch_dir, n.series_uid).exists()]
  if not ok:
    raise LidcRootError(f"no nodule patch could be made from the {len(patient_ids)} patient(s) "
                        f"under {lidc_dir} ({len(nodules)} annotated nodule(s) found); the "
                        f"reasons per scan are in {out / 'failures.tsv'}")
  entries = label_and_split(ok, rule, seed, fractions)
  config = dict(lidc_dir=str(lidc_dir), min_annotators=rule.min_annotators, rule=rule.rule,
                seed=seed, fractions=list(fractions), scans=len({n.series_uid for n in ok}),
                failed_scans=len(failures), duplicate_slices=duplicate_slices)
  by_split = collections.defaultdict(list)
  for e in entries:
    by_split[e.split].append(e)
  if beam_options is None:
    examples = {split: functools.partial(labelled_examples, group, str(patch_dir))
                for split, group in by_split.items()}
  else:
    examples = {split: functools.partial(beam_build.examples_transform, by_series(group),
                                         str(patch_dir))
                for split, group in by_split.items()}
  write_shards(out, examples, description=json.dumps(config), beam_options=beam_options)
  atomic.write_text(out / "build_config.json", json.dumps(config, indent=1))
  return entries


class LidcRootError(ValueError):
  """The LIDC-IDRI root is missing, empty, or gave no patch at all."""


def _patients(lidc_dir, patient_ids) -> list[str]:
  """`patient_ids`, or the patient folders under `lidc_dir`; LidcRootError if there are none."""
  root = pathlib.Path(lidc_dir)
  if not root.is_dir():
    raise LidcRootError(f"the LIDC-IDRI root {root} does not exist or is not a folder: pass "
                        "--lidc_dir, the folder that holds LIDC-IDRI-0001, LIDC-IDRI-0002, ...")
  if patient_ids is None:
    patient_ids = sorted(p.name for p in root.iterdir() if p.is_dir())
  if not patient_ids:
    raise LidcRootError(f"the LIDC-IDRI root {root} holds no patient folders (expected "
                        "LIDC-IDRI-0001, LIDC-IDRI-0002, ... as TCIA's download lays them out)")
  return list(patient_ids)


def _write_failures(path: pathlib.Path, failures: dict[str, str], patch_dir: pathlib.Path
                    ) -> None:
  """Merges this run's failures into the file; scans that have patches by now are dropped."""
  old = {}
  if path.exists():
    old = dict(line.split("\t", 1) for line in path.read_text().splitlines()[1:] if "\t" in line)
    old = {uid: why for uid, why in old.items() if not patch_file(patch_dir, uid).exists()}
  old.update(failures)
  atomic.write_text(path, "series_uid\treason\n"
                    + "".join(f"{k}\t{v}\n" for k, v in sorted(old.items())))


def main(argv):
  del argv
  from absl import app, flags
  from data_prep import label_flags
  FLAGS = flags.FLAGS
  lidc_dir = FLAGS.lidc_dir
  if lidc_dir is None:
    from data_prep.phantom import default_dicom_dir
    lidc_dir = str(default_dicom_dir())
  try:
    entries = build(lidc_dir, FLAGS.data_dir, label_flags.label_rule(), FLAGS.seed,
                    label_flags.fractions(), FLAGS.patient_ids, FLAGS.workers,
                    duplicate_slices=FLAGS.duplicate_slices,
                    beam_pipeline_options=FLAGS.beam_pipeline_options)
  except LidcRootError as e:
    raise app.UsageError(str(e)) from None
  print(format_table1([(e.split, e.label) for e in entries],
                      f"Table 1 of the shards written to {FLAGS.data_dir}"))
  failed = pathlib.Path(FLAGS.data_dir) / "failures.tsv"
  n_failed = len(failed.read_text().splitlines()) - 1
  if n_failed:
    print(f"{n_failed} scan(s) failed; reasons in {failed}")


if __name__ == "__main__":
  from absl import app, flags
  from data_prep import label_flags
  label_flags.define_label_flags()
  flags.DEFINE_string("lidc_dir", None, "LIDC-IDRI root (default: the built-in phantom).")
  flags.DEFINE_string("data_dir", None, "Output folder for the shards.", required=True)
  flags.DEFINE_list("patient_ids", None, "Only these patients.")
  flags.DEFINE_enum("duplicate_slices", "error", DUPLICATE_POLICIES,
                    "Two slices at one z: fail the scan, drop identical copies (error if they "
                    "differ), or keep the lower InstanceNumber (as pylidc does).")
  flags.DEFINE_string("beam_pipeline_options", None,
                      "Build with Apache Beam (pip install '.[beam]'): comma-separated "
                      "key=value pipeline options, e.g. 'runner=DirectRunner,"
                      "direct_num_workers=4'; '' for Beam's defaults. See the README.")
  app.run(main)
