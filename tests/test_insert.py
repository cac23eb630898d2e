"""Nodules in-painted into whole phantom scans: DICOM, NIfTI and MetaImage in; NIfTI and a
DICOM series out; geometry kept; nothing outside the hole changes; bad requests refused."""
import json

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from data_prep.scan_io import read_scan
from data_prep.volumes import ScanError
from experiments.insert import run


@pytest.fixture(scope="module")
def series(phantom_dir):
  """A phantom DICOM series folder."""
  return sorted({p.parent for p in phantom_dir.rglob("*.dcm")})[0]


def _lung_voxel(image: sitk.Image) -> tuple[int, int, int]:
  """(x, y, z) of a voxel in the left lung of the phantom, mid-scan."""
  size = image.GetSize()
  return int(size[0] * 0.31), int(size[1] * 0.5), size[2] // 2


def _read(path) -> np.ndarray:
  return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_a_nodule_into_a_dicom_series_back_as_nifti_and_dicom(series, gan, tmp_path, capsys):
  scan = read_scan(series)
  voxel = _lung_voxel(scan.image)
  centre = scan.image.TransformIndexToPhysicalPoint(voxel)
  reports = run(series, gan, tmp_path / "out", [dict(xyz=centre, diameter=12.0,
                                                     label="malignant")],
                dicom_out=tmp_path / "dicom", border_mm=3.0)
  out = sitk.ReadImage(str(tmp_path / "out" / "scan.nii.gz"))
  for get in ("GetOrigin", "GetSpacing", "GetDirection", "GetSize"):
    np.testing.assert_allclose(getattr(out, get)(), getattr(scan.image, get)(), atol=1e-4)
  before, after = sitk.GetArrayFromImage(scan.image), sitk.GetArrayFromImage(out)
  mask = _read(tmp_path / "out" / "nodule_mask.nii.gz")
  assert reports[0]["mean_hu_in_hole_generated"] > reports[0]["mean_hu_in_hole_before"] + 50
  # The mask's centroid is the requested voxel (within one voxel per axis).
  centroid = np.array(np.nonzero(mask)).mean(1)[::-1]            # x, y, z
  assert np.all(np.abs(centroid - voxel) <= 1.0), (centroid, voxel)
  # Voxels farther than the hole (radius ≤ (6 + 2)·1.05 mm) plus the border and one
  # interpolation step from the point are bit-identical; nearer ones changed.
  spacing = np.array(scan.image.GetSpacing())[::-1]
  grid = np.indices(before.shape, sparse=True)
  dist = np.sqrt(sum(((g - v) * s) ** 2 for g, v, s in zip(grid, voxel[::-1], spacing)))
  far = dist > 8.4 + spacing.max()
  np.testing.assert_array_equal(after[far], before[far])
  assert np.count_nonzero(after != before) > 100 and np.all((mask > 0) <= ~far)
  # The DICOM series: headers kept but the UIDs, derived, and the same volume as the NIfTI.
  files = sorted((tmp_path / "dicom").glob("*.dcm"))
  assert len(files) == len(scan.slice_files)
  first_in, first_out = pydicom.dcmread(scan.slice_files[0]), pydicom.dcmread(files[0])
  assert first_out.PatientID == first_in.PatientID
  assert first_out.StudyInstanceUID == first_in.StudyInstanceUID
  assert first_out.SeriesInstanceUID != first_in.SeriesInstanceUID
  assert first_out.SOPInstanceUID != first_in.SOPInstanceUID
  assert list(first_out.ImageType)[:2] == ["DERIVED", "SECONDARY"]
  assert "synthetic" in first_out.SeriesDescription
  assert first_out.ImagePositionPatient == first_in.ImagePositionPatient
  reader = sitk.ImageSeriesReader()
  reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "dicom")))
  np.testing.assert_array_equal(sitk.GetArrayFromImage(reader.Execute()), after)
  np.testing.assert_array_equal(sitk.GetArrayFromImage(read_scan(tmp_path / "dicom").image),
                                after)
  saved = json.loads((tmp_path / "out" / "insertions.json").read_text())
  assert saved["nodules"][0]["label"] == "malignant"
  assert "in-painted a 12 mm malignant nodule" in capsys.readouterr().out


def test_a_rated_gan_inserts_with_ratings_of_the_requested_class(series, rated_gan, tmp_path):
  from nodule_jax.nodule_ratings import nodule_table
  from nodule_jax.inpaint import saved_config
  scan = read_scan(series)
  centre = scan.image.TransformIndexToPhysicalPoint(_lung_voxel(scan.image))
  reports = run(series, rated_gan, tmp_path / "out", [dict(xyz=centre, diameter=10.0,
                                                           label="benign")])
  table = nodule_table(saved_config(rated_gan).data.data_dir, 22.0)
  benign = {tuple(r) for r in table[table[:, 0] == 0, 2:]}
  assert (reports[0]["texture"], reports[0]["calcification"]) in benign


@pytest.mark.slow
def test_nifti_and_metaimage_with_a_flipped_direction_and_two_nodules(series, gan, tmp_path):
  image = read_scan(series).image
  flipped = sitk.Flip(image, [True, True, False])   # direction diag(-1, -1, 1), same voxels
  assert flipped.GetDirection()[0] == -1
  nifti, mhd = tmp_path / "flipped.nii.gz", tmp_path / "scan.mhd"
  sitk.WriteImage(flipped, str(nifti))
  sitk.WriteImage(image, str(mhd))
  x, y, z = _lung_voxel(image)
  points = [image.TransformIndexToPhysicalPoint(v)
            for v in ((x, y, z), (image.GetSize()[0] - 1 - x, y, z))]  # both lungs
  requests = [dict(xyz=points[0], diameter=8.0, label="benign"),
              dict(xyz=points[1], diameter=14.0, label="malignant")]
  outputs = {}
  for path in (nifti, mhd):
    out_dir = tmp_path / path.name.split(".")[0]
    run(path, gan, out_dir, requests)
    written, source = sitk.ReadImage(str(out_dir / "scan.nii.gz")), sitk.ReadImage(str(path))
    assert written.GetDirection() == pytest.approx(source.GetDirection())
    assert written.GetOrigin() == pytest.approx(source.GetOrigin(), abs=1e-4)
    mask = _read(out_dir / "nodule_mask.nii.gz")
    half = mask.shape[2] // 2
    assert mask[:, :, :half].any() and mask[:, :, half:].any()  # one nodule in each lung
    outputs[path.suffix] = sitk.GetArrayFromImage(written)
  # The same physical requests give the same nodules whatever the file's axis order: the
  # same voxels but where float round-off in the other axis order tips a value at .5 HU.
  diff = np.abs(outputs[".gz"][:, ::-1, ::-1].astype(int) - outputs[".mhd"])
  assert diff.max() <= 1 and np.count_nonzero(diff) <= 1e-5 * diff.size


def test_bad_requests_are_clear_errors_and_write_nothing(series, gan, tmp_path):
  image = read_scan(series).image
  size = image.GetSize()
  lung = _lung_voxel(image)
  cases = [((size[0] + 5, lung[1], lung[2]), 10.0, "malignant", "outside the volume"),
           ((lung[0], lung[1], 3), 10.0, "malignant", "closer to the volume's edge"),
           ((25, 25, lung[2]), 10.0, "malignant", "in air outside the body"),
           (lung, 40.0, "malignant", "outside what the GAN was trained on"),
           (lung, 10.0, "huge", "label 'huge'")]
  for xyz, diameter, label, message in cases:
    with pytest.raises(ValueError, match=message):
      run(series, gan, tmp_path / "out", [dict(xyz=xyz, diameter=diameter, label=label)],
          voxel=True)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("*.partial"))
  # --pad allows the edge: air fills the part of the patch outside the scan.
  run(series, gan, tmp_path / "padded", [dict(xyz=(lung[0], lung[1], 3), diameter=10.0,
                                              label="malignant")], voxel=True, pad=True)
  assert (tmp_path / "padded" / "scan.nii.gz").exists()


def test_two_series_in_one_folder_and_unreadable_files_are_named(series, tmp_path):
  import shutil
  mixed = tmp_path / "mixed"
  shutil.copytree(series, mixed)
  ds = pydicom.dcmread(sorted(mixed.glob("*.dcm"))[0])
  ds.SeriesInstanceUID = "1.2.3.4"
  ds.save_as(mixed / "zz_other.dcm")
  with pytest.raises(ScanError, match="mixes 2 series"):
    read_scan(mixed)
  chosen = read_scan(mixed, series_uid=str(pydicom.dcmread(sorted(series.glob("*.dcm"))[0])
                                           .SeriesInstanceUID))
  assert len(chosen.slice_files) == len(list(series.glob("*.dcm")))
  (tmp_path / "bad.nii.gz").write_bytes(b"not an image")
  with pytest.raises(ScanError, match="unreadable image"):
    read_scan(tmp_path / "bad.nii.gz")
  with pytest.raises(ScanError, match="does not exist"):
    read_scan(tmp_path / "nowhere")


def test_soft_border_weight_and_the_centres_csv(tmp_path):
  from absl import app

  from experiments.insert import read_centres
  from nodule_jax.insert import soft_weight
  hole = np.zeros((8, 16, 16), bool)
  hole[2:6, 4:12, 4:12] = True                      # 8 mm deep in z (2 mm voxels), 8 mm in x, y
  w = soft_weight(hole, border_mm=3.0)
  assert np.all(w[~hole] == 0) and w.max() == 1.0
  assert w[3, 4, 7] == pytest.approx(1 / 3)         # an edge voxel: 1 mm from the outside
  assert w[3, 6, 7] == pytest.approx(1.0)           # 3 mm deep
  np.testing.assert_array_equal(soft_weight(hole, 0.0), hole.astype(np.float32))
  csv_file = tmp_path / "nodules.csv"
  csv_file.write_text("x,y,z,diameter_mm,label\n1,2,3,8,benign\n4,5,6,,\n")
  rows = read_centres(csv_file, diameter=12.0, label="malignant")
  assert rows == [dict(xyz=(1.0, 2.0, 3.0), diameter=8.0, label="benign"),
                  dict(xyz=(4.0, 5.0, 6.0), diameter=12.0, label="malignant")]
  with pytest.raises(app.UsageError, match="line 3: needs x, y, z and a diameter_mm"):
    read_centres(csv_file, diameter=None, label="malignant")
