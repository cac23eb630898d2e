"""Shards -> tf.data -> per-host numpy batches -> global `jax.Array`s on a mesh.

Each example becomes: image float32 [32, 64, 64, 1] in [-1, 1] (HU clipped to [-1000, 400]),
mask float32 [32, 64, 64, 1] (consensus, 0/1), label int32, diameter_mm float32.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import struct
from typing import Iterator, Sequence

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from data_prep.tfds_builder import shard_dir
from nodule_jax.sharding import to_global

HU_MIN, HU_MAX = -1000.0, 400.0


class _DropTfdsDtypeNotice(logging.Filter):
  """tfds 4.9 warns about its own `FeatureConnector.dtype` on every read."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "FeatureConnector.dtype" not in record.getMessage()


logging.getLogger("absl").addFilter(_DropTfdsDtypeNotice())


@dataclasses.dataclass(frozen=True)
class Augment:
  """Random crop with padding (voxels along D, H, W), flips, isotropic scaling."""
  crop_pad: tuple[int, int, int] = (0, 0, 0)
  flip: bool = False
  scale: float = 0.0  # factor drawn from [1 - scale, 1 + scale]


def hu_to_unit(hu):
  """HU -> [-1, 1] after clipping to [HU_MIN, HU_MAX]; works on tf and numpy arrays."""
  x = hu.astype(np.float32) if isinstance(hu, np.ndarray) else tf.cast(hu, tf.float32)
  lo, hi = HU_MIN, HU_MAX
  x = np.clip(x, lo, hi) if isinstance(x, np.ndarray) else tf.clip_by_value(x, lo, hi)
  return (x - lo) / (hi - lo) * 2.0 - 1.0


def _normalise(ex) -> dict:
  return {
      "image": hu_to_unit(ex["image"])[..., None],
      "mask": tf.cast(ex["mask"], tf.float32)[..., None],
      "label": tf.cast(ex["label"], tf.int32),
      "diameter_mm": tf.cast(ex["diameter_mm"], tf.float32),
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


def check_shards(split_info) -> None:
  """Walks the TFRecord framing of every shard of a split (12-byte headers, no payloads):
  a truncated or damaged file is an error naming it now, not a DataLossError mid-training."""
  for path, expected in zip(split_info.filepaths, split_info.shard_lengths):
    path = pathlib.Path(path)
    if not path.exists():
      raise FileNotFoundError(f"shard {path} is missing; {_REBUILD}")
    size, pos, n = path.stat().st_size, 0, 0
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


def load_split(data_dir, split: str, *, shuffle_files: bool, seed: int) -> tf.data.Dataset:
  """This host's part of `split` from the shards under `data_dir`, normalised."""
  path = shard_dir(data_dir)
  if not (path / "dataset_info.json").exists():
    raise FileNotFoundError(f"no shards at {path}: run `python -m data_prep.build` first")
  builder = tfds.builder_from_directory(str(path))
  if split not in builder.info.splits:
    raise ValueError(f"{path} has no split {split!r} (it has {list(builder.info.splits)})")
  check_shards(builder.info.splits[split])
  per_host = tfds.split_for_jax_process(split, drop_remainder=False)
  read = tfds.ReadConfig(shuffle_seed=seed, interleave_cycle_length=1 if not shuffle_files else 4)
  ds = builder.as_dataset(split=per_host, shuffle_files=shuffle_files, read_config=read)
  return ds.map(_normalise, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def make_dataset(data_dirs: str | Sequence[str], split: str, global_batch_size: int, *,
                 train: bool, seed: int = 0, aug: Augment = Augment(),
                 repeat: bool | None = None, drop_remainder: bool | None = None,
                 shuffle_buffer: int = 2048) -> tf.data.Dataset:
  """Per-host batches [global_batch_size / process_count, ...] of normalised examples.

  `data_dirs` may name several shard sets (real + synthetic), concatenated. Training data is
  shuffled, augmented and repeated; the order is a pure function of `seed` (deterministic).
  """
  dirs = [data_dirs] if isinstance(data_dirs, (str, os.PathLike)) else list(data_dirs)
  if global_batch_size % jax.process_count():
    raise ValueError(f"batch size {global_batch_size} is not divisible by the "
                     f"{jax.process_count()} processes")
  ds = None
  for d in dirs:
    part = load_split(d, split, shuffle_files=train, seed=seed)
    ds = part if ds is None else ds.concatenate(part)
  repeat = train if repeat is None else repeat
  drop_remainder = train if drop_remainder is None else drop_remainder
  if train:
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  if repeat:
    ds = ds.repeat()
  if train and aug != Augment():
    ds = ds.enumerate().map(
        lambda i, ex: augment(ex, tf.stack([tf.cast(seed, tf.int64), i]), aug),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  options = tf.data.Options()
  options.deterministic = True
  ds = ds.with_options(options)
  return ds.batch(global_batch_size // jax.process_count(), drop_remainder=drop_remainder
                  ).prefetch(tf.data.AUTOTUNE)


def global_batches(ds: tf.data.Dataset, mesh) -> Iterator[dict[str, jax.Array]]:
  """Iterates `ds` as global arrays sharded over the mesh's 'data' axis."""
  for batch in tfds.as_numpy(ds):
    yield to_global(batch, mesh)
