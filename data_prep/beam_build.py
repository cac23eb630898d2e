"""The shard build as Apache Beam pipelines, one element per scan (the `beam` extra).

  python -m data_prep.build --lidc_dir DIR --data_dir OUT \
      --beam_pipeline_options="runner=DirectRunner,direct_num_workers=2"

Two pipelines, so that the result equals the single-process build's:
  1. every scan not yet in the patch cache is extracted (DICOM -> `<series_uid>.npz`); a scan
     that fails yields its reason, collected into `failures.tsv` as the local build does;
  2. the patient split (which needs every scan's outcome) is made on the driver, then
     tensorflow-datasets' Beam support writes the shards, one element per scan.
Workers read `lidc_dir` and write under `data_dir` (the patch cache, the extraction's
failures, TFDS's build folder) at the driver's paths: on a cluster, both live on a shared
filesystem (NFS, Filestore, a gcsfuse mount).
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
import pathlib
import shutil
from typing import Sequence

from data_prep.extract import extract_to_file


def pipeline_options(spec: str):
  """"runner=FlinkRunner,flink_master=host:8081,save_main_session" -> beam's PipelineOptions
  (TFDS's syntax: key=value, or a bare key for an on/off option); ValueError where Beam's
  parser refuses it. An empty spec means Beam's defaults (the DirectRunner).
  """
  from apache_beam.options.pipeline_options import PipelineOptions
  flags = []
  for item in filter(None, (s.strip() for s in spec.split(","))):
    key, sep, value = item.partition("=")
    if not key.strip("-"):
      raise ValueError(f"--beam_pipeline_options: {item!r} has no option name (whole "
                       f"option: {spec!r})")
    flags.append(f"--{key.lstrip('-')}" + (f"={value}" if sep else ""))
  options = PipelineOptions(flags)
  try:
    with contextlib.redirect_stderr(io.StringIO()) as usage:
      options.get_all_options()              # Beam's own parser: exits on a malformed value
  except SystemExit:
    why = usage.getvalue().strip().splitlines()[-1].split("error: ")[-1]
    raise ValueError(f"--beam_pipeline_options: Beam refused {spec!r}: {why} (an on/off "
                     "option is a bare name: `save_main_session`)") from None
  return options


def _extract(item, lidc_dir: str, patch_dir: str, duplicates: str) -> list[str]:
  """One element (series_uid, nodules) -> [json (uid, error)] when it failed, else []."""
  uid, nodules = item
  error = extract_to_file(lidc_dir, nodules, patch_dir, duplicates)
  return [json.dumps([uid, error])] if error else []


def extract_all(lidc_dir: str, by_series: dict[str, Sequence], patch_dir: pathlib.Path,
                options, duplicates: str = "error") -> dict[str, str]:
  """Extracts the scans of `by_series` (series_uid -> nodules) in one Beam pipeline.

  Returns {series_uid: error} of the scans that failed.
  """
  import apache_beam as beam
  out = patch_dir.parent / ".beam_failures"
  shutil.rmtree(out, ignore_errors=True)
  extract = functools.partial(_extract, lidc_dir=lidc_dir, patch_dir=str(patch_dir),
                              duplicates=duplicates)
  with beam.Pipeline(options=options) as pipeline:
    _ = (pipeline
         | "Scans" >> beam.Create(sorted(by_series.items()))
         | "Extract" >> beam.FlatMap(extract)
         | "Failures" >> beam.io.WriteToText(str(out / "part")))
  lines = [line for f in sorted(out.glob("part*")) for line in f.read_text().splitlines()]
  shutil.rmtree(out, ignore_errors=True)
  return dict(json.loads(line) for line in lines)


def examples_transform(groups: dict[str, Sequence], patch_dir: str):
  """A PTransform yielding one split's (key, example) pairs, one element per scan.

  groups: series_uid -> that scan's `LabelledNodule`s in this split.
  """
  import apache_beam as beam
  return (beam.Create(sorted(groups.items()))
          | beam.FlatMap(_scan_examples, patch_dir=patch_dir))


def _scan_examples(item, patch_dir: str):
  """One element (series_uid, labelled nodules) -> its (key, example) pairs."""
  from data_prep.tfds_builder import scan_examples
  return list(scan_examples(*item, patch_dir))
