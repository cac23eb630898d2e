"""The built-in phantom dataset: made once in the cache directory, reused after."""
from __future__ import annotations

import json
import pathlib

from data_prep.paths import cache_dir

DEMO_SCANS = 45  # ≥ 150 nodules, ≥ 25 malignant under the default label rule
DEMO_SEED = 0


def phantom_root() -> pathlib.Path:
  return cache_dir() / f"phantom-{DEMO_SCANS}scans-seed{DEMO_SEED}"


def phantom_dicom_dir() -> pathlib.Path:
  """The phantom's DICOM root (TCIA layout), written on first use."""
  from data_prep.phantom import MANIFEST, make_phantom, pick_scans
  root = phantom_root() / "dicom"
  manifest = root / MANIFEST
  done = json.loads(manifest.read_text()).get("scans", {}) if manifest.exists() else {}
  if len(done) >= DEMO_SCANS:
    print(f"No LIDC root configured: using the built-in phantom in {root}")
    return root
  print(f"No LIDC root configured: writing the built-in phantom ({DEMO_SCANS} scans) "
        f"to {root} (once; about 2 minutes)")
  make_phantom(str(root), pick_scans(DEMO_SCANS, DEMO_SEED), seed=DEMO_SEED)
  return root


def phantom_data_dir() -> pathlib.Path:
  """Shards built from the phantom with the default label rule and split, built on first use."""
  from data_prep.build import build
  from data_prep.tfds_builder import shard_dir
  out = phantom_root() / "shards"
  if not (shard_dir(out) / "dataset_info.json").exists():
    build(str(phantom_dicom_dir()), str(out))
  else:
    print(f"Using the phantom shards in {out}")
  return out
