"""Synthetic sets: any class, size and count; deterministic; written atomically; read by the
classifier's pipeline beside the real set."""
import hashlib
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_prep.labels import BENIGN, MALIGNANT
from data_prep.tfds_builder import shard_dir
from experiments.synthesize import run
from nodule_jax import atomic, input_pipeline
from nodule_jax.synthesize import Request, plan


@pytest.fixture(scope="module")
def real(built):
  return {r["nodule_id"].decode(): r for r in tfds.as_numpy(
      tfds.builder_from_directory(str(shard_dir(built[0]))).as_dataset(split="train"))}


def _records(out):
  return list(tfds.as_numpy(tfds.builder_from_directory(str(shard_dir(out))).as_dataset(
      split="train")))


def _shard_digest(out) -> str:
  files = sorted(shard_dir(out).glob("*.tfrecord*"))
  assert files
  return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()


def test_paper_set_keeps_backgrounds_covers_nodules_and_says_how_it_was_made(gan, built, real,
                                                                             tmp_path, capsys):
  import SimpleITK as sitk
  with pytest.raises(FileNotFoundError, match="no GAN checkpoint"):
    run(tmp_path / "nothing", str(built[0]), tmp_path / "x", progress=False)
  n_malignant = sum(int(r["label"]) for r in real.values() if r["diameter_mm"] <= 22.0)
  out = tmp_path / "syn"
  summary = run(gan, str(built[0]), out, Request(per_real=1.5), progress=False)
  records = _records(out)
  assert len(records) == summary["synthetic"] == round(1.5 * n_malignant)
  for r in records:
    assert r["label"] == r["requested_label"] == MALIGNANT and r["synthetic"]
    assert r["image"].shape == (32, 64, 64) and r["image"].dtype == np.int16
    source = real[r["source_id"].decode()]
    assert r["nodule_id"].decode().endswith(r["source_id"].decode())
    assert int(source["label"]) == MALIGNANT
    assert r["requested_diameter_mm"] == r["diameter_mm"] == source["diameter_mm"]
    hole = r["mask"].astype(bool)
    assert hole.any() and not hole[:8].any() and not hole[:, :12].any()  # inside the crop
    assert not np.any(source["mask"].astype(bool) & ~hole)                # covers the nodule
    np.testing.assert_array_equal(r["image"][~hole], source["image"][~hole])
  assert sorted(int(r["noise_seed"]) for r in records) == list(range(len(records)))
  image = sitk.ReadImage(str(sorted((out / "nifti").glob("*.nii.gz"))[0]))
  assert image.GetSize() == (64, 64, 32) and image.GetSpacing() == (1.0, 1.0, 2.0)
  assert (out / "synthetic.png").read_bytes()[:4] == b"\x89PNG"
  # Table 1's Train+Syn line: the real training counts plus the synthetic ones.
  counts = np.bincount([int(r["label"]) for r in real.values()], minlength=2)
  printed = capsys.readouterr().out
  assert (f"| Train+Syn | {counts[0]} | {counts[1] + len(records)} | "
          f"{counts.sum() + len(records)} |") in printed
  assert json.loads((out / "synthesis.json").read_text())["table1"] in printed


def test_benign_requests_on_any_backgrounds_with_a_size(gan, built, real, tmp_path):
  out = tmp_path / "benign"
  run(gan, str(built[0]), out, Request(label=BENIGN, backgrounds="any", num=5, diameter=12.0),
      progress=False)
  records = _records(out)
  assert len(records) == 5
  for r in records:
    assert r["label"] == r["requested_label"] == BENIGN
    assert r["requested_diameter_mm"] == r["diameter_mm"] == 12.0
    # The hole is at least the 12 mm sphere: > 4/3·π·6³ mm³ of 2 mm³ voxels, less the jitter.
    assert r["mask"].sum() * 2.0 >= 4 / 3 * np.pi * 6 ** 3 * 0.9
  # The classifier's pipeline reads a synthetic set beside the real one.
  counts = input_pipeline.label_counts([built[0], out])
  ds = input_pipeline.train_stream([built[0], out], 8, seed=0)
  batch = next(iter(tfds.as_numpy(ds)))
  assert batch["image"].shape == (8, 32, 64, 64, 1)
  real_counts = np.bincount([int(r["label"]) for r in real.values()], minlength=2)
  np.testing.assert_array_equal(counts, real_counts + [5, 0])


@pytest.mark.slow
def test_the_same_seed_writes_the_same_shards_whatever_the_batch_size(gan, built, tmp_path):
  request = Request(num=5, seed=3, diameter="sample")
  run(gan, str(built[0]), tmp_path / "a", request, nifti=0, progress=False)
  run(gan, str(built[0]), tmp_path / "b", request, nifti=0, progress=False)
  assert _shard_digest(tmp_path / "a") == _shard_digest(tmp_path / "b")
  run(gan, str(built[0]), tmp_path / "c", Request(num=5, seed=3, diameter="sample",
                                                  batch_size=2), nifti=0, progress=False)
  a, c = _records(tmp_path / "a"), _records(tmp_path / "c")
  for x, y in zip(sorted(a, key=lambda r: r["noise_seed"]), sorted(c, key=lambda r: r["noise_seed"])):
    np.testing.assert_array_equal(x["mask"], y["mask"])
    assert np.abs(x["image"].astype(int) - y["image"]).max() <= 1  # f32 rounding, in HU
  run(gan, str(built[0]), tmp_path / "d", Request(num=5, seed=4), nifti=0, progress=False)
  assert _shard_digest(tmp_path / "a") != _shard_digest(tmp_path / "d")


def test_plan_draws_sizes_from_the_requested_class_and_refuses_what_it_cannot_make(real):
  patches = [r for r in real.values() if r["diameter_mm"] <= 22.0]
  benign = {float(p["diameter_mm"]) for p in patches if int(p["label"]) == BENIGN}
  backgrounds, picks, diameters = plan(Request(label=BENIGN, num=50, diameter="sample"),
                                       patches, 22.0)
  assert all(int(b["label"]) == MALIGNANT for b in backgrounds) and len(picks) == 50
  assert set(diameters.tolist()) <= benign and len(set(diameters.tolist())) > 1
  for request, message in ((Request(diameter=40.0), "outside what the GAN was trained on"),
                           (Request(diameter=1.0), "outside what the GAN was trained on"),
                           (Request(backgrounds="huge"), "known: malignant, benign, any"),
                           (Request(per_real=0.0), "makes 0 patches")):
    with pytest.raises(ValueError, match=message):
      plan(request, patches, 22.0)
  with pytest.raises(ValueError, match="no malignant training patches"):
    plan(Request(), [p for p in patches if int(p["label"]) == BENIGN], 22.0)


def test_an_interrupted_writer_leaves_the_previous_output_and_nothing_complete(tmp_path):
  out = tmp_path / "set"
  with atomic.directory(out, "a.txt") as tmp:
    (tmp / "a.txt").write_text("first")
  with pytest.raises(KeyboardInterrupt):
    with atomic.directory(out, "a.txt") as tmp:
      (tmp / "a.txt").write_text("half")
      raise KeyboardInterrupt
  assert (out / "a.txt").read_text() == "first" and not (tmp_path / "set.partial").exists()
  # A folder that is not an earlier output is never replaced.
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "notes.txt").write_text("keep")
  with pytest.raises(FileExistsError, match="not an output of this command"):
    with atomic.directory(tmp_path / "mine", "a.txt"):
      pass
  assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
  atomic.write_text(tmp_path / "x.json", "{}")
  assert (tmp_path / "x.json").read_text() == "{}" and len(list(tmp_path.iterdir())) == 3


def test_figures_2_and_3_and_a_size_it_was_not_trained_on(gan, built, tmp_path):
  from experiments.figures import run as figures
  from nodule_jax.figures import FIGURE2, FIGURE3
  paths = figures(gan, str(built[0]), tmp_path, samples=1, diameters=(6.0, 12.0), draws=2)
  assert [p.name for p in paths] == [FIGURE2, FIGURE3]
  assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
  with pytest.raises(ValueError, match=r"outside what the GAN was trained on \(3 to 22 mm"):
    figures(gan, str(built[0]), tmp_path, diameters=(40.0,))


def test_evaluation_requests_at_class_sizes_draw_from_the_pools_and_grow_the_hole(gan, built):
  from nodule_jax.evaluate_synthesis import inpaint_both_classes, load_patches
  from nodule_jax.inpaint import load_generator
  config, models, g_params, _ = load_generator(gan)
  backgrounds = load_patches(str(built[0]), ("train",))
  keep = np.flatnonzero(backgrounds["diameter_mm"] <= 15.0)[:3]
  backgrounds = {k: v[keep] for k, v in backgrounds.items()}
  pools = [np.array([4.0, 5.0], np.float32), np.array([20.0, 21.0], np.float32)]
  swapped = inpaint_both_classes(config, models, g_params, backgrounds, 2, 0, batch_size=4)
  sized = inpaint_both_classes(config, models, g_params, backgrounds, 2, 0, batch_size=4,
                               sizes=pools)
  assert all(len(made[k]) == 6 for made in (swapped, sized) for k in made)  # 3 x 2, no padding
  # The label swap: both requests at the background's size, in one hole.
  np.testing.assert_array_equal(swapped["hole_benign"], swapped["hole_malignant"])
  np.testing.assert_array_equal(swapped["diameter_malignant"],
                                backgrounds["diameter_mm"][swapped["background"]])
  for cls, name in enumerate(("benign", "malignant")):
    assert set(sized[f"diameter_{name}"].tolist()) <= set(pools[cls].tolist())
    # a hole for a requested size still holds the background's own hole (its nodule)
    assert np.all(sized[f"hole_{name}"] >= swapped[f"hole_{name}"])
  volume = lambda hole: hole.sum((1, 2, 3))
  assert np.all(volume(sized["hole_malignant"]) > volume(swapped["hole_malignant"]))


def test_a_rated_gan_draws_its_requests_ratings_from_the_class_and_writes_them(
    rated_gan, built, tmp_path):
  """Conditioned on texture and calcification: each synthetic example holds the ratings
  it was asked for, those of a training nodule of the requested class; the evaluation's
  passes draw them per class, or keep the background's own; the figures draw."""
  from experiments.figures import run as figures
  from nodule_jax.evaluate_synthesis import inpaint_both_classes, load_patches
  from nodule_jax.inpaint import load_generator
  from nodule_jax.nodule_ratings import nodule_table
  table = nodule_table(str(built[0]), 22.0)
  rows = lambda cls: {tuple(r) for r in table[table[:, 0] == cls, 2:]}
  out = tmp_path / "syn"
  run(rated_gan, str(built[0]), out, Request(label=BENIGN, backgrounds="any", num=6),
      progress=False)
  for r in _records(out):
    ratings = (float(np.median(r["texture"])), float(np.median(r["calcification"])))
    assert ratings in rows(BENIGN) and 1 <= len(r["texture"]) <= 2
  config, models, g_params, _ = load_generator(rated_gan)
  backgrounds = load_patches(str(built[0]), ("train",))
  backgrounds = {k: v[backgrounds["diameter_mm"] <= 15.0][:3] for k, v in backgrounds.items()}
  pools = [np.array([4.0, 5.0], np.float32), np.array([20.0, 21.0], np.float32)]
  drawn = inpaint_both_classes(config, models, g_params, backgrounds, 2, 0, batch_size=4,
                               sizes=pools, nodules=table)
  own = inpaint_both_classes(config, models, g_params, backgrounds, 2, 0, batch_size=4)
  for cls, name in enumerate(("benign", "malignant")):
    assert {tuple(r) for r in drawn[f"ratings_{name}"]} <= rows(cls)
    np.testing.assert_array_equal(own[f"ratings_{name}"],
                                  backgrounds["ratings"][own["background"]])
  paths = figures(rated_gan, str(built[0]), tmp_path, samples=1, diameters=(6.0,), draws=1)
  assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
