"""Broken scans get specific errors, the build goes on, edge nodules give padded patches."""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import tensorflow_datasets as tfds

from conftest import PHANTOM_PATIENTS
from data_prep.patches import AIR_HU, PATCH_SHAPE, extract_patch
from data_prep.tfds_builder import shard_dir
from data_prep.volumes import ScanError, _check_z, read_series

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


@pytest.mark.parametrize("runner", [[], ["--beam_pipeline_options=runner=DirectRunner"]],
                         ids=["processes", "beam"])
def test_build_reports_each_broken_scan_and_completes(broken_root, tmp_path, runner):
  out = tmp_path / "shards"
  proc = subprocess.run(
      [sys.executable, "-m", "data_prep.build", "--lidc_dir", str(broken_root),
       "--data_dir", str(out), "--fractions", "1,0,0", "--workers", "2", *runner],
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


@pytest.fixture
def duplicated_series(phantom_dir, tmp_path):
  """An LIDC root holding one phantom scan plus a second file at the position of slice 5.

  Returns (root, series folder, series UID, the copy's dataset)."""
  series = sorted((phantom_dir / GOOD).rglob("*.dcm"))[0].parent
  folder = tmp_path / "root" / series.relative_to(phantom_dir)
  shutil.copytree(series, folder)
  ds = pydicom.dcmread(sorted(folder.glob("*.dcm"))[5])
  ds.InstanceNumber = int(ds.InstanceNumber) + 1000
  ds.SOPInstanceUID = pydicom.uid.generate_uid()
  ds.save_as(folder / "zz-copy.dcm")
  return tmp_path / "root", folder, str(ds.SeriesInstanceUID), ds


def test_duplicate_slices_error_or_are_dropped_by_policy(duplicated_series):
  _, folder, uid, copy = duplicated_series
  with pytest.raises(ScanError, match=r"duplicate slice position .*zz-copy\.dcm.*identical"):
    read_series(folder, uid, "DUP")
  kept = read_series(folder, uid, "DUP", duplicates="identical")
  (folder / "zz-copy.dcm").rename(folder / "zz-copy.bak")
  original = read_series(folder, uid, "DUP")
  (folder / "zz-copy.bak").rename(folder / "zz-copy.dcm")
  np.testing.assert_array_equal(kept.hu, original.hu)
  assert kept.spacing == original.spacing and kept.origin == original.origin

  pixels = copy.pixel_array.copy()
  pixels[:8, :8] += 100                                  # now a different slice at that z
  copy.PixelData = pixels.tobytes()
  copy.save_as(folder / "zz-copy.dcm")
  with pytest.raises(ScanError, match="different pixel data"):
    read_series(folder, uid, "DUP", duplicates="identical")
  lowest = read_series(folder, uid, "DUP", duplicates="lowest_instance")   # the original
  np.testing.assert_array_equal(lowest.hu, original.hu)
  copy.InstanceNumber = 0
  copy.save_as(folder / "zz-copy.dcm")
  lowest = read_series(folder, uid, "DUP", duplicates="lowest_instance")   # now the copy
  k = round((float(copy.ImagePositionPatient[2]) - original.origin[2]) / original.spacing[2])
  changed = np.flatnonzero(np.any(lowest.hu != original.hu, axis=(1, 2)))
  assert changed.tolist() == [k]
  np.testing.assert_array_equal(lowest.hu[k, :8, :8],
                                original.hu[k, :8, :8] + 100 * float(copy.RescaleSlope))


def test_build_retries_a_failed_scan_with_another_duplicate_policy(duplicated_series, tmp_path):
  root = duplicated_series[0]
  cmd = [sys.executable, "-m", "data_prep.build", "--lidc_dir", str(root), "--data_dir",
         str(tmp_path / "out"), "--fractions", "1,0,0", "--workers", "1"]
  first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
  assert first.returncode != 0 and "no nodule patch could be made" in first.stderr  # its only scan
  assert "duplicate slice position" in (tmp_path / "out" / "failures.tsv").read_text()
  again = subprocess.run(cmd + ["--duplicate_slices", "identical"], capture_output=True,
                         text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  builder = tfds.builder_from_directory(str(shard_dir(tmp_path / "out")))
  records = list(tfds.as_numpy(builder.as_dataset(split="train")))
  assert records and {r["patient_id"].decode() for r in records} == {GOOD}
  assert "| All | " in again.stdout and "scan(s) failed" not in again.stdout
  assert (tmp_path / "out" / "failures.tsv").read_text() == "series_uid\treason\n"


def test_an_lidc_root_missing_empty_or_without_a_readable_scan_is_one_line(broken_root,
                                                                           tmp_path):
  def build(root):
    return subprocess.run([sys.executable, "-m", "data_prep.build", "--lidc_dir", str(root),
                           "--data_dir", str(tmp_path / "out"), "--workers", "1"],
                          capture_output=True, text=True, timeout=600)
  (tmp_path / "empty").mkdir()
  only_broken = tmp_path / "only_broken"
  shutil.copytree(broken_root / TRUNCATED, only_broken / TRUNCATED)
  for root, message in ((tmp_path / "nowhere", "does not exist or is not a folder"),
                        (tmp_path / "empty", "holds no patient folders"),
                        (only_broken, r"no nodule patch could be made from the 1 patient")):
    proc = build(root)
    assert proc.returncode != 0 and re.search(message, proc.stderr), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
  assert not shard_dir(tmp_path / "out").exists()
  assert "unreadable DICOM file" in (tmp_path / "out" / "failures.tsv").read_text()


def test_comparing_several_gan_runs_without_an_output_folder_is_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.evaluate_synthesis", "--gan_workdir",
       f"{tmp_path}/a,{tmp_path}/b", "--classifier", str(tmp_path / "judge")],
      capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert "several --gan_workdir need --out" in proc.stderr and "Traceback" not in proc.stderr
