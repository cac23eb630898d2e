"""The built-in phantom's shards: built once from its DICOM (`phantom.default_dicom_dir`),
reused after."""
from __future__ import annotations

import pathlib

from data_prep.build import build
from data_prep.phantom import DEFAULT_SCANS, default_dicom_dir, default_root
from data_prep.tfds_builder import shard_dir


def phantom_data_dir(scans: int = DEFAULT_SCANS) -> pathlib.Path:
  """Shards built from the phantom of `scans` scans with the default label rule and split,
  built on first use."""
  out = default_root(scans) / "shards"
  if not (shard_dir(out) / "dataset_info.json").exists():
    build(str(default_dicom_dir(scans)), str(out))
  else:
    print(f"Using the phantom shards in {out}")
  return out
