"""Test set-up: 8 fake CPU devices, a private cache, and a small phantom built once."""
import atexit
import os
import shutil
import tempfile

# Before jax / tensorflow are imported anywhere.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
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
