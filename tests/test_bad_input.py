"""Broken scans get specific errors, the build goes on, edge nodules give padded patches."""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import tensorflow_datasets as tfds

from conftest import PHANTOM_PATIENTS
from data_prep.patches import AIR_HU, PATCH_SHAPE, extract_patch
from data_prep.tfds_builder import shard_dir
from data_prep.volumes import ScanError, _check_z

TRUNCATED, MISSING, GOOD = PHANTOM_PATIENTS
NO_SERIES = "LIDC-IDRI-0001"


@pytest.fixture(scope="module")
def broken_root(phantom_dir, tmp_path_factory):
  root = tmp_path_factory.mktemp("broken")
  for pid in PHANTOM_PATIENTS:
    shutil.copytree(phantom_dir / pid, root / pid)
  files = sorted((root / TRUNCATED).rglob("*.dcm"))
  data = files[10].read_bytes()
  files[10].write_bytes(data[: len(data) // 3])
  files = sorted((root / MISSING).rglob("*.dcm"))
  files[len(files) // 2].unlink()
  other = root / NO_SERIES / "01-01-2000-NA-x" / "1.000000-NA-y"  # another patient's series
  other.mkdir(parents=True)
  shutil.copy(sorted((root / GOOD).rglob("*.dcm"))[0], other / "1-001.dcm")
  return root


def test_build_reports_each_broken_scan_and_completes(broken_root, tmp_path):
  out = tmp_path / "shards"
  proc = subprocess.run(
      [sys.executable, "-m", "data_prep.build", "--lidc_dir", str(broken_root),
       "--data_dir", str(out), "--fractions", "1,0,0", "--workers", "2"],
      capture_output=True, text=True, env={**os.environ}, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  failures = (out / "failures.tsv").read_text()
  assert re.search(rf"{TRUNCATED}: unreadable DICOM file 1-011\.dcm", failures), failures
  assert re.search(rf"{MISSING}: missing slice\(s\): gap of", failures), failures
  assert re.search(rf"{NO_SERIES}: no DICOM series with SeriesInstanceUID", failures), failures
  assert "3 scan(s) failed" in proc.stdout

  builder = tfds.builder_from_directory(str(shard_dir(out)))
  records = list(tfds.as_numpy(builder.as_dataset(split="train")))
  assert records and {r["patient_id"].decode() for r in records} == {GOOD}
  # The printed Table 1 matches the records.
  benign = sum(r["label"] == 0 for r in records)
  assert f"| Train | {benign} | {len(records) - benign} | {len(records)} |" in proc.stdout
  assert f"| All | {benign} | {len(records) - benign} | {len(records)} |" in proc.stdout


def test_nodule_5mm_from_the_volume_edge_gives_a_padded_patch():
  # A volume whose voxels hold their own x coordinate (mm): linear resampling is exact.
  shape = (40, 100, 120)  # D, H, W
  x = np.arange(shape[2], dtype=np.float32) * 0.7 - 50.0
  image = sitk.GetImageFromArray(np.broadcast_to(x, shape).copy())
  image.SetOrigin((-50.0, -30.0, 100.0))
  image.SetSpacing((0.7, 0.7, 2.5))
  centre = (-50.0 + 5.0, 5.0, 150.0)  # 5 mm inside the left (x) edge
  patch = extract_patch(image, centre)
  assert patch.shape == PATCH_SHAPE
  xs = centre[0] + (np.arange(64) - 31.5)
  inside = xs >= -50.0
  row = patch[16, 32]
  np.testing.assert_array_equal(row[~inside], AIR_HU)
  np.testing.assert_allclose(row[inside], np.rint(xs[inside]), atol=1)


@pytest.mark.parametrize("z, message", [
    ([0, 2.5, 2.5, 5.0], "duplicate slice position z=2.50"),
    ([0, 2.5, 7.5, 10.0], r"missing slice\(s\): gap of 5.00 mm"),
    ([0, 2.5, 5.0, 6.0, 8.5, 11.0], "inconsistent slice spacing"),
    ([0.0], "at least two slices"),
])
def test_slice_position_checks(z, message):
  with pytest.raises(ScanError, match=message):
    _check_z(np.array(z, float), [f"f{i}.dcm" for i in range(len(z))], "SCAN")
