"""Outputs a later stage reads, each writer SIGKILLed mid-way in a subprocess: the previous
output survives whole and nothing that looks complete is left."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Killed after the new content is written in full, before it is renamed into place.
KILL_AT_RENAME = "import os, signal\nos.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
EXAMPLE = textwrap.dedent("""
    import numpy as np
    def example(i):
      return f"n{i}", dict(image=np.full((32, 64, 64), i, np.int16),
                           mask=np.zeros((32, 64, 64), np.uint8), label=i % 2,
                           malignancy=np.array([3], np.int32), n_annotators=1, diameter_mm=5.0,
                           texture=np.array([5], np.int32), calcification=np.array([6], np.int32),
                           centre_mm=np.zeros(3, np.float32), patient_id="p", nodule_id=f"n{i}")
""")


def _killed(code: str) -> None:
  """Runs `code` in a fresh interpreter and checks that it died of SIGKILL."""
  env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


def test_text_outputs_keep_the_previous_version(tmp_path):
  """atomic.write_text writes metrics.json, best.json, table1.md, table2.md, config.json,
  build_config.json, failures.tsv, the evaluation report and summary.md."""
  path = tmp_path / "metrics.json"
  path.write_text('{"auc": 0.5}')
  _killed(KILL_AT_RENAME + f"from nodule_jax import atomic\n"
          f"atomic.write_text({str(path)!r}, '{{\"auc\": 0.9}}')")
  assert json.loads(path.read_text()) == {"auc": 0.5}
  assert json.loads((tmp_path / "metrics.json.partial").read_text()) == {"auc": 0.9}


def test_prediction_files_keep_the_previous_version(tmp_path):
  from nodule_jax import metrics
  path = tmp_path / "predictions_test.csv"
  metrics.write_predictions(path, dict(nodule_id=["a"], label=[1], prob=[0.25]))
  _killed(KILL_AT_RENAME + "from nodule_jax import metrics\n"
          f"metrics.write_predictions({str(path)!r}, dict(nodule_id=['a', 'b'], label=[1, 0], "
          "prob=[0.9, 0.1]))")
  assert metrics.read_predictions(path)["nodule_id"] == ["a"]


def test_a_killed_shard_build_leaves_the_previous_set(tmp_path):
  import tensorflow_datasets as tfds

  from data_prep.tfds_builder import shard_dir, write_shards
  exec(EXAMPLE, namespace := {})
  write_shards(tmp_path, {"train": lambda: (namespace["example"](i) for i in range(3))})
  _killed(EXAMPLE + "import os, signal\nfrom data_prep.tfds_builder import write_shards\n"
          "def examples():\n  yield from (example(i) for i in range(10, 15))\n"
          "  os.kill(os.getpid(), signal.SIGKILL)\n"
          f"write_shards({str(tmp_path)!r}, {{'train': examples}})")
  ds = tfds.builder_from_directory(str(shard_dir(tmp_path))).as_dataset(split="train")
  assert sorted(int(ex["image"][0, 0, 0]) for ex in tfds.as_numpy(ds)) == [0, 1, 2]
  # the next build starts afresh and replaces the set whole
  write_shards(tmp_path, {"train": lambda: (namespace["example"](i) for i in range(20, 22))})
  ds = tfds.builder_from_directory(str(shard_dir(tmp_path))).as_dataset(split="train")
  assert sorted(int(ex["image"][0, 0, 0]) for ex in tfds.as_numpy(ds)) == [20, 21]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["lidc_patches"]


def test_a_killed_output_folder_leaves_the_previous_one(tmp_path):
  """atomic.directory writes the synthetic sets and the inserted scans (NIfTI, DICOM)."""
  from nodule_jax import atomic
  out = tmp_path / "synthetic"
  with atomic.directory(out, "summary.json") as tmp:
    (tmp / "summary.json").write_text("1")
    np.save(tmp / "a.npy", np.zeros(3))
  _killed("import os, signal, pathlib\nfrom nodule_jax import atomic\n"
          f"with atomic.directory(pathlib.Path({str(out)!r}), 'summary.json') as tmp:\n"
          "  (tmp / 'summary.json').write_text('2')\n"
          "  os.kill(os.getpid(), signal.SIGKILL)\n")
  assert (out / "summary.json").read_text() == "1" and (out / "a.npy").exists()
  with atomic.directory(out, "summary.json") as tmp:  # the next run clears what was left
    (tmp / "summary.json").write_text("3")
  assert (out / "summary.json").read_text() == "3" and not (out / "a.npy").exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"]


def test_a_disk_that_fills_during_a_shard_build_leaves_the_previous_set(tmp_path):
  """No file may grow past 64 KiB (RLIMIT_FSIZE) while five random patches are written."""
  import tensorflow_datasets as tfds

  from data_prep.tfds_builder import shard_dir, write_shards
  exec(EXAMPLE, namespace := {})
  write_shards(tmp_path, {"train": lambda: (namespace["example"](i) for i in range(3))})
  code = (EXAMPLE + "import resource, signal\nfrom data_prep.tfds_builder import write_shards\n"
          "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
          "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, resource.RLIM_INFINITY))\n"
          "def examples():\n  for i in range(5):\n    key, ex = example(i)\n"
          "    ex['image'] = np.random.default_rng(i).integers(-1000, 400, (32, 64, 64), np.int16)\n"
          "    yield key, ex\n"
          f"write_shards({str(tmp_path)!r}, {{'train': examples}})")
  env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode != 0 and "File too large" in proc.stderr, proc.stderr[-3000:]
  ds = tfds.builder_from_directory(str(shard_dir(tmp_path))).as_dataset(split="train")
  assert sorted(int(ex["image"][0, 0, 0]) for ex in tfds.as_numpy(ds)) == [0, 1, 2]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["lidc_patches"]
