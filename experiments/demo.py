"""The main job on the built-in phantom (or `--lidc_dir`): data -> shards -> Table 1 + figure.

  python -m experiments.demo [--workdir DIR] [--lidc_dir DIR --data_dir DIR]
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pathlib  # noqa: E402

from absl import app, flags  # noqa: E402

flags.DEFINE_string("workdir", "workdir/demo", "Where the report and figures go.")
flags.DEFINE_string("lidc_dir", None, "LIDC-IDRI root (default: the built-in phantom).")
flags.DEFINE_string("data_dir", None, "Shard folder for --lidc_dir.")


def main(argv):
  del argv
  import tensorflow_datasets as tfds

  from data_prep.build import build
  from data_prep.default_data import phantom_data_dir
  from data_prep.figures import patch_gallery
  from data_prep.selection import format_table1
  from data_prep.tfds_builder import shard_dir
  FLAGS = flags.FLAGS
  if FLAGS.lidc_dir:
    if not FLAGS.data_dir:
      raise app.UsageError("--lidc_dir needs --data_dir")
    build(FLAGS.lidc_dir, FLAGS.data_dir)
    data_dir = FLAGS.data_dir
  else:
    data_dir = phantom_data_dir()
  workdir = pathlib.Path(FLAGS.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  builder = tfds.builder_from_directory(str(shard_dir(data_dir)))
  pairs, train = [], []
  for split in builder.info.splits:
    for ex in tfds.as_numpy(builder.as_dataset(split=split)):
      pairs.append((split, int(ex["label"])))
      if split == "train":
        train.append(ex)
  table = format_table1(pairs, f"Table 1 of the shards in {data_dir}")
  print(table)
  (workdir / "table1.md").write_text(table + "\n")
  patch_gallery(train, str(workdir / "patches.png"))
  print(f"wrote {workdir / 'table1.md'} and {workdir / 'patches.png'}")


if __name__ == "__main__":
  app.run(main)
