"""The input pipeline on 8 fake CPU devices."""
import re
import shutil

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from data_prep.tfds_builder import shard_dir
from nodule_jax import input_pipeline
from nodule_jax.intensity import hu_to_unit
from nodule_jax.sharding import make_mesh

AUG = input_pipeline.Augment(crop_pad=(2, 4, 4), flip=True, scale=0.1)
KEYS = ("image", "mask", "label", "diameter_mm")


def _take(data_dir, seed, n=3, batch=8):
  ds = input_pipeline.train_stream(str(data_dir), batch, seed=seed, aug=AUG)
  it = input_pipeline.global_batches(ds, make_mesh(), KEYS)
  return [jax.tree.map(np.asarray, next(it)) for _ in range(n)]


def test_batches_are_sharded_over_data(built):
  assert jax.device_count() == 8
  mesh = make_mesh()
  ds = input_pipeline.train_stream(str(built[0]), 8, seed=0, aug=AUG)
  batch = next(input_pipeline.global_batches(ds, mesh, KEYS))
  image = batch["image"]
  assert image.shape == (8, 32, 64, 64, 1) and image.dtype == np.float32
  assert image.sharding.spec == P("data")
  assert len(image.addressable_shards) == 8
  assert {s.data.shape for s in image.addressable_shards} == {(1, 32, 64, 64, 1)}
  assert batch["label"].shape == (8,) and batch["mask"].shape == (8, 32, 64, 64, 1)
  values = np.asarray(image)
  assert values.min() >= -1 and values.max() <= 1
  assert set(np.unique(np.asarray(batch["mask"]))) <= {0.0, 1.0}


def test_deterministic_mode_repeats_exactly(built):
  a, b, c = _take(built[0], 7), _take(built[0], 7), _take(built[0], 8)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert any(not np.array_equal(x["image"], z["image"]) for x, z in zip(a, c))


def test_hu_scaling():
  hu = np.array([-2000, -1000, -300, 400, 3000], np.int16)
  np.testing.assert_allclose(hu_to_unit(hu), [-1, -1, 0, 1, 1], atol=1e-6)


def test_augment_keeps_image_and_mask_aligned():
  import tensorflow as tf
  image = -np.ones((32, 64, 64, 1), np.float32)
  mask = np.zeros_like(image)
  image[12:20, 28:36, 24:32] = 0.5
  mask[12:20, 28:36, 24:32] = 1
  for i in range(5):
    out = input_pipeline.augment({"image": tf.constant(image), "mask": tf.constant(mask)},
                     tf.constant([3, i], tf.int64), AUG)
    img, m = out["image"].numpy(), out["mask"].numpy().astype(bool)
    bright = img[..., 0] >= -0.25 - 1e-4  # the same 50% partial-volume level as the mask
    assert img.shape == image.shape and m.any() and bright.any()
    np.testing.assert_allclose(np.argwhere(m[..., 0]).mean(0), np.argwhere(bright).mean(0),
                               atol=0.5)
    assert abs(int(m.sum()) - int(bright.sum())) <= 0.1 * bright.sum()


def test_scaling_scales_the_diameter_and_never_past_the_largest():
  """A 20 mm ball (2 mm slices): the diameter follows the ball's volume, and a factor
  that would take it past 22 mm is lowered to 1.1."""
  import tensorflow as tf
  d, h, w = np.meshgrid(np.arange(32) * 2.0, np.arange(64.0), np.arange(64.0), indexing="ij")
  ball = ((d - 31) ** 2 + (h - 31.5) ** 2 + (w - 31.5) ** 2 <= 10.0 ** 2)[..., None]
  ex = {"image": tf.constant(np.where(ball, 0.5, -1.0), tf.float32),
        "mask": tf.constant(ball, tf.float32), "diameter_mm": tf.constant(20.0)}
  aug = input_pipeline.Augment(scale=0.3, max_diameter_mm=22.0)
  diameters = []
  for i in range(12):
    out = input_pipeline.augment(ex, tf.constant([5, i], tf.int64), aug)
    diameter = float(out["diameter_mm"])
    growth = (out["mask"].numpy().sum() / ball.sum()) ** (1 / 3)
    assert diameter == pytest.approx(20.0 * growth, rel=0.04) and diameter <= 22.0
    diameters.append(diameter)
  assert max(diameters) == pytest.approx(22.0) and min(diameters) < 16.0


def test_missing_shards_and_split_are_clear_errors(built, tmp_path):
  with pytest.raises(FileNotFoundError, match="data_prep.build"):
    input_pipeline.load_split(str(tmp_path), "train")
  with pytest.raises(ValueError, match="no split 'bogus'"):
    input_pipeline.load_split(str(built[0]), "bogus")
  old = shard_dir(tmp_path).parent / "1.0.0"     # shards written before the ratings
  shutil.copytree(shard_dir(built[0]), old)
  with pytest.raises(FileNotFoundError, match=r"version 1\.0\.0; this code reads 1\.1\.0 "
                     r"\(1\.1 added the texture.*rebuild the shards"):
    input_pipeline.load_split(str(tmp_path), "train")


def test_a_truncated_shard_is_a_clear_error_before_training(built, tmp_path):
  shutil.copytree(shard_dir(built[0]), shard_dir(tmp_path))
  shard = sorted(shard_dir(tmp_path).glob("*-train.tfrecord-*"))[0]
  input_pipeline.eval_batches(str(tmp_path), "train", 2)   # intact: fine
  data = shard.read_bytes()
  shard.write_bytes(data[: len(data) - 1000])
  with pytest.raises(ValueError, match=re.escape(f"shard {shard} is truncated or damaged")):
    input_pipeline.eval_batches(str(tmp_path), "train", 2)


def _host_batches(data_dir, monkeypatch, processes, index, start=0, n=4, batch=4):
  """The first `n` local batches host `index` of `processes` reads (tf.data only)."""
  import tensorflow_datasets as tfds
  monkeypatch.setattr(input_pipeline.jax, "process_count", lambda: processes)
  monkeypatch.setattr(input_pipeline.jax, "process_index", lambda: index)
  ds = input_pipeline.train_stream(str(data_dir), batch, seed=3, aug=AUG, start=start)
  it = iter(tfds.as_numpy(ds))
  return [next(it) for _ in range(n)]


def test_hosts_read_their_rows_of_one_global_stream_and_a_resume_continues_it(built,
                                                                                monkeypatch):
  one = _host_batches(built[0], monkeypatch, 1, 0)
  assert input_pipeline.host_size(built[0], "train") < 4 * 4  # the 2nd epoch's order is in
  halves = [_host_batches(built[0], monkeypatch, 2, i) for i in range(2)]
  for b, whole in enumerate(one):
    for key in ("image", "mask", "label", "nodule_id"):
      np.testing.assert_array_equal(
          np.concatenate([halves[0][b][key], halves[1][b][key]]), whole[key])
  resumed = _host_batches(built[0], monkeypatch, 1, 0, start=2 * 4, n=2)
  for b, batch in enumerate(resumed):
    for key in ("image", "nodule_id"):
      np.testing.assert_array_equal(batch[key], one[2 + b][key])
  with pytest.raises(ValueError, match="not a multiple of the batch size 4"):
    input_pipeline.train_stream(str(built[0]), 4, start=6)


def test_a_bit_flipped_shard_is_named_before_training(built, tmp_path):
  shutil.copytree(shard_dir(built[0]), shard_dir(tmp_path))
  shard = sorted(shard_dir(tmp_path).glob("*-train.tfrecord-*"))[0]
  data = bytearray(shard.read_bytes())
  data[len(data) // 2] ^= 0x10   # inside a record's payload: the framing still adds up
  shard.write_bytes(bytes(data))
  with pytest.raises(ValueError, match=re.escape(f"shard {shard} is corrupt: corrupted record")):
    input_pipeline.train_stream(str(tmp_path), 2)


def test_oversampling_repeats_the_chosen_nodules_within_each_epoch_and_resumes(built):
  label, diameter = input_pipeline.labels_and_diameters([built[0]])
  from_mm = float(np.median(diameter[label == 0]))
  chosen = (label == 0) & (diameter >= from_mm)
  assert 0 < chosen.sum() < len(label)
  epoch = len(label) + 2 * int(chosen.sum())
  ds = input_pipeline.train_stream(str(built[0]), 1, seed=3,
                                   repeat=input_pipeline.oversampling(0, from_mm, 3))
  stream = ds.as_numpy_iterator()
  seen = [next(stream) for _ in range(2 * epoch)]
  for part in (seen[:epoch], seen[epoch:]):   # each epoch: every nodule, the chosen 3 times
    ids = [b["nodule_id"][0] for b in part]
    times = {i: ids.count(i) for i in set(ids)}
    assert len(times) == len(label)
    assert all(t == (3 if b["label"][0] == 0 and b["diameter_mm"][0] >= from_mm else 1)
               for b in part for t in [times[b["nodule_id"][0]]])
  resumed = input_pipeline.train_stream(str(built[0]), 1, seed=3, start=epoch - 2,
                                        repeat=input_pipeline.oversampling(0, from_mm, 3))
  for b, again in zip(seen[epoch - 2:epoch + 2], resumed.as_numpy_iterator()):
    assert b["nodule_id"][0] == again["nodule_id"][0]   # across the epoch boundary
