"""Shards -> tf.data -> per-host numpy batches -> global `jax.Array`s on a mesh.

Each example becomes: image float32 [32, 64, 64, 1] in [-1, 1] (HU clipped to [-1000, 400]),
mask float32 [32, 64, 64, 1] (the shard's mask: the consensus, or a synthetic set's hole),
label int32, diameter_mm float32, ratings float32 [2] (the annotators' median texture, 1
ground glass .. 5 solid, and calcification, 1..5 a pattern, 6 absent; NaN where a set has
none), nodule_id (bytes; host-side only).

The training stream is global and a pure function of (seed, position): epoch e is the
split in a permutation seeded by (seed, e), example p of the stream is augmented with the
seed (seed, p), and global batch b is positions [b·B, (b+1)·B). Every host walks the same
order (payloads undecoded) and decodes only its own rows of each batch, so the global
batches are the same on any number of hosts, and a run resumed at step s, asking for the
stream from position s·(examples per step), sees exactly what an uninterrupted run saw.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import re
import struct
from typing import Iterator, Sequence

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from data_prep.tfds_builder import REAL_KEYS, features, shard_dir
from nodule_jax.intensity import hu_to_unit
from nodule_jax.sharding import to_global

_EPOCH_BITS = 32  # the per-epoch shuffle seed is (seed << 32) | epoch


class _DropTfdsDtypeNotice(logging.Filter):
  """tfds 4.9 warns about its own `FeatureConnector.dtype` on every read."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "FeatureConnector.dtype" not in record.getMessage()


def _quiet_tfds() -> None:
  absl_logger = logging.getLogger("absl")
  if not any(isinstance(f, _DropTfdsDtypeNotice) for f in absl_logger.filters):
    absl_logger.addFilter(_DropTfdsDtypeNotice())


@dataclasses.dataclass(frozen=True)
class Augment:
  """Random crop with padding (voxels along D, H, W), flips, isotropic scaling (the
  nodule's `diameter_mm` scaled with it, never past `max_diameter_mm`)."""
  crop_pad: tuple[int, int, int] = (0, 0, 0)
  flip: bool = False
  scale: float = 0.0  # factor drawn from [1 - scale, 1 + scale]
  max_diameter_mm: float = float("inf")  # a factor that would scale a nodule past this is
                                         # lowered to reach it (a larger one is not enlarged)

  @property
  def identity(self) -> bool:
    return not (any(self.crop_pad) or self.flip or self.scale)

  @classmethod
  def from_config(cls, data, max_diameter_mm: float = float("inf")) -> "Augment":
    """The augmentation a config's `data` section names (`crop_pad`, `flip`, `scale`)."""
    return cls(tuple(data.crop_pad), data.flip, data.scale, max_diameter_mm)


def _median(scores) -> tf.Tensor:
  """The median of an int vector as float32 (NaN when it is empty)."""
  v = tf.sort(tf.cast(scores, tf.float32))
  n = tf.size(v)
  return tf.cond(n > 0, lambda: (v[(n - 1) // 2] + v[n // 2]) / 2,
                 lambda: tf.constant(np.nan, tf.float32))


def ratings(ex) -> tf.Tensor:
  """float32 [2]: a raw example's median texture and calcification ratings."""
  return tf.stack([_median(ex["texture"]), _median(ex["calcification"])])


def _normalise(ex) -> dict:
  return {
      "image": hu_to_unit(ex["image"])[..., None],
      "mask": tf.cast(ex["mask"], tf.float32)[..., None],
      "label": tf.cast(ex["label"], tf.int32),
      "diameter_mm": tf.cast(ex["diameter_mm"], tf.float32),
      "ratings": ratings(ex),
      "nodule_id": ex["nodule_id"],
  }


def _resize3d(x, shape):
  """Trilinear resize of [D, H, W, C] to `shape` (D, H, W), as two separable 2-D resizes."""
  x = tf.image.resize(x, shape[1:])                              # [D, h, w, C]
  x = tf.transpose(x, [1, 0, 2, 3])                              # [h, D, w, C]
  x = tf.image.resize(x, [shape[0], shape[2]])                   # [h, d, w, C]
  return tf.transpose(x, [1, 0, 2, 3])


def _fit(x, shape):
  """Centre crop or zero-pad [D, H, W, C] to `shape`."""
  cur = tf.shape(x)[:3]
  pad = tf.maximum(shape - cur, 0)
  x = tf.pad(x, tf.concat([tf.stack([pad // 2, pad - pad // 2], 1), [[0, 0]]], 0))
  start = (tf.shape(x)[:3] - shape) // 2
  return tf.slice(x, tf.concat([start, [0]], 0), tf.concat([shape, [-1]], 0))


def augment(ex: dict, seed, aug: Augment) -> dict:
  """Same random transform on image and mask. `seed`: int32 [2] for stateless ops."""
  image, mask = ex["image"], ex["mask"]
  shape = tf.shape(image)[:3]
  x = tf.concat([image + 1.0, mask], -1)  # image shifted so that air pads as 0
  seeds = tf.random.experimental.stateless_split(seed, 5)
  if aug.scale:
    s = tf.random.stateless_uniform([], seeds[0], 1 - aug.scale, 1 + aug.scale)
    if "diameter_mm" in ex:
      d = ex["diameter_mm"]
      s = tf.minimum(s, tf.maximum(aug.max_diameter_mm / d, 1.0))
      ex = {**ex, "diameter_mm": tf.minimum(d * s, tf.maximum(aug.max_diameter_mm, d))}
    new = tf.cast(tf.round(tf.cast(shape, tf.float32) * s), tf.int32)
    x = _fit(_resize3d(x, new), shape)
  if any(aug.crop_pad):
    p = tf.constant(aug.crop_pad)
    x = tf.pad(x, tf.concat([tf.stack([p, p], 1), [[0, 0]]], 0))
    u = tf.random.stateless_uniform([3], seeds[1])
    offset = tf.minimum(tf.cast(u * tf.cast(2 * p + 1, tf.float32), tf.int32), 2 * p)
    x = tf.slice(x, tf.concat([offset, [0]], 0), tf.concat([shape, [-1]], 0))
  if aug.flip:
    for axis in range(3):
      flip = tf.random.stateless_uniform([], seeds[2 + axis]) < 0.5
      x = tf.cond(flip, lambda x=x, a=axis: tf.reverse(x, [a]), lambda x=x: x)
  return {**ex, "image": x[..., :1] - 1.0, "mask": tf.cast(x[..., 1:] >= 0.5, tf.float32)}


_REBUILD = ("rebuild the shards (`python -m data_prep.build`, or `experiments.synthesize` for "
            "synthetic ones)")


@tf.autograph.experimental.do_not_convert
def _add_one(n, _):
  return n + 1


def _count(ds: tf.data.Dataset) -> int:
  return int(ds.reduce(np.int64(0), _add_one))


_CHECKED: set[tuple[str, int, int]] = set()  # (path, size, mtime) of shards found whole


def check_shards(split_info) -> None:
  """Checks every shard of a split before it is read: the TFRecord framing (12-byte
  headers), then each record's CRC (about 100 MB/s). A truncated, damaged or bit-flipped
  file is an error naming it now, not a DataLossError mid-training. A file already found
  whole, unchanged since, is not read again (validation runs every epoch)."""
  for path, expected in zip(split_info.filepaths, split_info.shard_lengths):
    path = pathlib.Path(path)
    if not path.exists():
      raise FileNotFoundError(f"shard {path} is missing; {_REBUILD}")
    stat = path.stat()
    if (str(path), stat.st_size, stat.st_mtime_ns) in _CHECKED:
      continue
    size, pos, n = stat.st_size, 0, 0
    with open(path, "rb") as f:
      while pos + 12 <= size:
        f.seek(pos)
        end = pos + 12 + struct.unpack("<Q", f.read(8))[0] + 4  # length, CRC, record, CRC
        if end > size:
          break
        pos, n = end, n + 1
    if pos != size or n != expected:
      raise ValueError(f"shard {path} is truncated or damaged: its {size} bytes hold {n} "
                       f"complete record(s) of {expected}; {_REBUILD}")
    try:
      _count(tf.data.TFRecordDataset(str(path)))
    except tf.errors.DataLossError as e:
      where = re.search(r"corrupted record at \d+", e.message)
      raise ValueError(f"shard {path} is corrupt: {where[0] if where else e.message} (its CRC "
                       f"does not match: flipped bits); {_REBUILD}") from None
    _CHECKED.add((str(path), stat.st_size, stat.st_mtime_ns))


def _builder(data_dir):
  path = shard_dir(data_dir)
  if not (path / "dataset_info.json").exists():
    older = sorted(p.parent.name for p in path.parent.glob("*/dataset_info.json"))
    if older:
      raise FileNotFoundError(f"the shards in {path.parent} are version {', '.join(older)}; "
                              f"this code reads {path.name} (1.1 added the texture and "
                              f"calcification ratings): {_REBUILD}")
    raise FileNotFoundError(f"no shards at {path}: run `python -m data_prep.build` first")
  _quiet_tfds()
  return tfds.builder_from_directory(str(path))


def _host_split(builder, split: str) -> str:
  """This host's part of `split` (checked: it exists and its shards are whole)."""
  if split not in builder.info.splits:
    raise ValueError(f"{shard_dir(builder.data_dir)} has no split {split!r} "
                     f"(it has {list(builder.info.splits)})")
  check_shards(builder.info.splits[split])
  return tfds.split_for_jax_process(split, drop_remainder=False)


_SKIP_ARRAYS = {"image": tfds.decode.SkipDecoding(), "mask": tfds.decode.SkipDecoding()}


def load_split(data_dir, split: str, decoders=None, whole: bool = False) -> tf.data.Dataset:
  """This host's part of `split` (all of it with `whole`) from the shards under `data_dir`,
  in shard order, raw (int16 HU image, uint8 mask, ...)."""
  builder = _builder(data_dir)
  host_split = _host_split(builder, split)
  return builder.as_dataset(split=split if whole else host_split, shuffle_files=False,
                            decoders=decoders)


def host_size(data_dir, split: str) -> int:
  """Number of examples of `split` this host reads."""
  builder = _builder(data_dir)
  return builder.info.splits[_host_split(builder, split)].num_examples


def nodule_rows(data_dirs: Sequence, split: str = "train") -> np.ndarray:
  """[N, 4] float32 rows (label, diameter_mm, median texture, median calcification) of
  `split` over shard folders, in shard order (images not decoded)."""
  rows = [np.zeros((0, 4), np.float32)]
  for d in data_dirs:
    ds = _builder(d).as_dataset(split=split, decoders=_SKIP_ARRAYS)
    ds = ds.map(lambda e: tf.concat([tf.cast(tf.stack([e["label"]]), tf.float32),
                                     tf.stack([tf.cast(e["diameter_mm"], tf.float32)]),
                                     ratings(e)], 0))
    rows += [np.asarray(list(tfds.as_numpy(ds)), np.float32).reshape(-1, 4)]
  return np.concatenate(rows)


def labels_and_diameters(data_dirs: Sequence, split: str = "train"
                         ) -> tuple[np.ndarray, np.ndarray]:
  """(label [N], diameter_mm [N]) of `split` over shard folders (images not decoded)."""
  rows = nodule_rows(data_dirs, split)
  return rows[:, 0].astype(int), rows[:, 1]


def label_counts(data_dirs: Sequence, split: str = "train") -> np.ndarray:
  """[2] benign, malignant counts of `split` over shard folders (images not decoded)."""
  return np.bincount(labels_and_diameters(data_dirs, split)[0], minlength=2)


def as_list(data_dirs) -> list:
  """One shard folder or several -> a list of them."""
  return [data_dirs] if isinstance(data_dirs, (str, os.PathLike)) else list(data_dirs)


def _concatenated(data_dirs, split: str, keep=None, decoders=None, whole: bool = False
                  ) -> tf.data.Dataset:
  """The sets' examples one after the other, with the features every set has (a synthetic
  set's extra ones dropped)."""
  parts = [load_split(d, split, decoders, whole).map(lambda ex: {k: ex[k] for k in REAL_KEYS})
           for d in as_list(data_dirs)]
  ds = parts[0]
  for part in parts[1:]:
    ds = ds.concatenate(part)
  return ds if keep is None else ds.filter(keep)


_ARRAYS = {k: features()[k] for k in _SKIP_ARRAYS}  # every shard set encodes them alike


def _decode_arrays(ex: dict) -> dict:
  """Decodes the image and mask that `_SKIP_ARRAYS` left as encoded bytes."""
  return {**ex, **{k: spec.decode_example(ex[k]) for k, spec in _ARRAYS.items()}}


def _local_batch(global_batch_size: int) -> int:
  if global_batch_size % jax.process_count():
    raise ValueError(f"batch size {global_batch_size} is not divisible by the "
                     f"{jax.process_count()} processes")
  return global_batch_size // jax.process_count()


def _deterministic(ds: tf.data.Dataset) -> tf.data.Dataset:
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options)


def train_stream(data_dirs: str | Sequence[str], global_batch_size: int, *, seed: int = 0,
                 aug: Augment = Augment(), start: int = 0, shuffle_buffer: int = 2048,
                 keep=None, repeat=None) -> tf.data.Dataset:
  """Endless per-host training batches [global_batch_size / process_count, ...]: this host's
  rows of the global stream's batches, shuffled per epoch and augmented, from global
  position `start` (a multiple of the global batch).

  `data_dirs` may name several shard sets (real + synthetic), concatenated; `keep`
  (raw example without image and mask -> bool tensor) selects examples and `repeat` (the
  same -> int64 tensor, `oversampling`) says how many times each appears an epoch. See the
  module's docstring for why the stream is the same on any number of hosts and after a
  resume.
  """
  local = _local_batch(global_batch_size)
  if start % global_batch_size:
    raise ValueError(f"stream position {start} is not a multiple of the batch size "
                     f"{global_batch_size}")
  base = _concatenated(data_dirs, "train", keep, _SKIP_ARRAYS, whole=True)
  if repeat is not None:
    base = base.flat_map(lambda ex: tf.data.Dataset.from_tensors(ex).repeat(repeat(ex)))
  size = (_count(base) if keep is not None or repeat is not None else  # count what is kept
          sum(_builder(d).info.splits["train"].num_examples for d in as_list(data_dirs)))
  if size == 0:
    raise ValueError(f"no training examples in {data_dirs}"
                     + (" that the filter keeps" if keep is not None else ""))
  first_epoch, offset = divmod(start, size)
  epoch_seed = lambda e: tf.bitwise.bitwise_or(
      tf.bitwise.left_shift(tf.constant(seed, tf.int64), _EPOCH_BITS), e)
  ds = tf.data.Dataset.range(first_epoch, 2 ** _EPOCH_BITS).flat_map(
      lambda e: base.shuffle(shuffle_buffer, seed=epoch_seed(e)))
  first_row = jax.process_index() * local

  def on_this_host(i, ex):
    row = i % global_batch_size - first_row
    return (row >= 0) & (row < local)

  def prepare(i, ex):
    ex = _normalise(_decode_arrays(ex))
    if aug.identity:
      return ex
    return augment(ex, tf.stack([tf.constant(seed, tf.int64), i]), aug)

  ds = tf.data.Dataset.zip(tf.data.Dataset.range(start, 2 ** 62), ds.skip(offset))
  ds = ds.filter(on_this_host).map(prepare, num_parallel_calls=tf.data.AUTOTUNE,
                                   deterministic=True)
  return _deterministic(ds).batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def oversampling(label: int, from_mm: float, times: int):
  """raw example -> int64 tensor: `times` for nodules of class `label` and at least
  `from_mm` in diameter, 1 for the others (`train_stream`'s `repeat`)."""
  def repeat(ex):
    chosen = (ex["label"] == label) & (ex["diameter_mm"] >= from_mm)
    return tf.where(chosen, tf.constant(times, tf.int64), tf.constant(1, tf.int64))
  return repeat


def eval_batches(data_dirs: str | Sequence[str], split: str, global_batch_size: int,
                 whole: bool = False) -> tf.data.Dataset:
  """One pass over this host's part of `split` (with `whole`: all of it, in batches of
  `global_batch_size`) in shard order, not augmented; the last batch may be short."""
  ds = _concatenated(data_dirs, split, whole=whole).map(
      _normalise, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  size = global_batch_size if whole else _local_batch(global_batch_size)
  return _deterministic(ds).batch(size).prefetch(tf.data.AUTOTUNE)


def global_batches(ds: tf.data.Dataset, mesh, keys: Sequence[str]
                   ) -> Iterator[dict[str, jax.Array]]:
  """Iterates `ds` as global arrays of `keys`, sharded over the mesh's 'data' axis."""
  for batch in tfds.as_numpy(ds):
    yield to_global({k: batch[k] for k in keys}, mesh)
