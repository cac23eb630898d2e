"""Test set-up: 8 fake CPU devices, a private cache, and a small phantom built once."""
import atexit
import os
import shutil
import tempfile

# Before jax / tensorflow are imported anywhere.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# XLA's own convolutions compile ~3× faster than the patch matmul (the CPU default) and these
# models are tiny and take few steps; test_gan_parts checks the two agree (values, gradients,
# a whole GAN step). NODULE_JAX_CONV=auto python -m pytest runs everything the users' way.
os.environ.setdefault("NODULE_JAX_CONV", "xla")
os.environ["NODULE_JAX_CACHE"] = tempfile.mkdtemp(prefix="nodule_jax_test_cache_")
atexit.register(shutil.rmtree, os.environ["NODULE_JAX_CACHE"], ignore_errors=True)

import pathlib  # noqa: E402

import pytest  # noqa: E402

# Three real LIDC scans with few slices; benign and malignant nodules under the default rule.
PHANTOM_PATIENTS = ("LIDC-IDRI-0003", "LIDC-IDRI-0011", "LIDC-IDRI-0045")
FRACTIONS = (0.34, 0.33, 0.33)  # three patients: one per split


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> pathlib.Path:
  from data_prep.phantom import make_phantom
  out = tmp_path_factory.mktemp("phantom")
  make_phantom(str(out), PHANTOM_PATIENTS, progress=False)
  return out


@pytest.fixture(scope="session")
def built(phantom_dir, tmp_path_factory):
  """(data_dir, entries) of shards built from the phantom by the real build path."""
  from data_prep.build import build
  out = tmp_path_factory.mktemp("shards")
  entries = build(str(phantom_dir), str(out), fractions=FRACTIONS, progress=False)
  return out, entries


@pytest.fixture(scope="session")
def shards(built, tmp_path_factory):
  """The phantom's patches re-split by nodule so every split holds both classes, and an
  extra 'synthetic' shard set (malignant train patches again) for strategy=synthesis."""
  import numpy as np
  import tensorflow_datasets as tfds

  from data_prep.tfds_builder import shard_dir, write_shards
  builder = tfds.builder_from_directory(str(shard_dir(built[0])))
  records = [ex for split in builder.info.splits
             for ex in tfds.as_numpy(builder.as_dataset(split=split))]
  splits = {"train": [], "validation": [], "test": []}
  for label in (0, 1):
    group = [r for r in records if r["label"] == label]
    for i, r in enumerate(group):
      splits[("validation", "test", "train", "train")[i % 4]].append(r)
  def examples(rs):
    return lambda: ((r["nodule_id"].decode(), {k: (v.decode() if isinstance(v, bytes) else v)
                                              for k, v in r.items()}) for r in rs)
  real = tmp_path_factory.mktemp("cls_real")
  write_shards(real, {s: examples(rs) for s, rs in splits.items()})
  syn = tmp_path_factory.mktemp("cls_syn")
  write_shards(syn, {"train": examples([r for r in splits["train"] if r["label"] == 1])})
  return real, syn, {s: np.bincount([int(r["label"]) for r in rs], minlength=2)
                     for s, rs in splits.items()}


@pytest.fixture(scope="session")
def gan(built, tmp_path_factory):
  """A GAN on the demo's centre crop, trained one step: enough to synthesise from."""
  return _one_step_gan(built, tmp_path_factory, "")


@pytest.fixture(scope="session")
def rated_gan(built, tmp_path_factory):
  """The same GAN conditioned on the texture and calcification ratings."""
  return _one_step_gan(built, tmp_path_factory, "texture,calcification")


def _one_step_gan(built, tmp_path_factory, ratings: str) -> pathlib.Path:
  from configs.synthesis import get_config
  from nodule_jax import train_synthesis
  config = get_config("smoke")
  config.model.ratings = ratings
  config.data.data_dir, config.num_devices = str(built[0]), 2
  config.data.crop = (16, 40, 40)  # the in-painted crop is pasted back into the full patch
  config.model.local_box = (16, 32, 32)
  config.model.critic_widths = (8, 8, 8)
  config.mask.update(margin_mm=2.0, jitter=0.05, shift_mm=0.5, max_diameter_mm=22.0)
  config.num_steps, config.checkpoint_every = 1, 1
  workdir = tmp_path_factory.mktemp("gan_crop")
  train_synthesis.train_and_evaluate(config, workdir)
  return workdir
