"""Synthetic malignant nodules from a trained GAN -> a shard set for strategy=synthesis.

  python -m experiments.synthesize --config configs/synthesis.py:demo --gan_workdir DIR \
      --out DIR [--per_real 2] [--data_dir SHARDS]
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402
from experiments import cli  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file("config", None, "The GAN's config (path[:variant]).",
                                lock_config=True)
flags.DEFINE_string("gan_workdir", None, "The GAN training workdir.", required=True)
flags.DEFINE_string("out", None, "Where the synthetic shards go.", required=True)
flags.DEFINE_string("data_dir", "", "Real shards (default: the config's, else the phantom).")
flags.DEFINE_float("per_real", 2.0, "Synthetic patches per real malignant training patch "
                   "(the paper: 463 for 233, about 2).")
flags.DEFINE_integer("seed", 0, "Seed of the choice of backgrounds, masks and noise.")
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  from nodule_jax.synthesize import synthesize
  FLAGS = flags.FLAGS
  data_dir = FLAGS.data_dir or FLAGS.config.data.data_dir
  if not data_dir:
    from data_prep.default_data import phantom_data_dir
    data_dir = str(phantom_data_dir())
  summary = synthesize(FLAGS.config, FLAGS.gan_workdir, data_dir, FLAGS.out, FLAGS.per_real,
                       seed=FLAGS.seed)
  print(f"wrote {summary['synthetic']} synthetic malignant patches (from "
        f"{summary['real_malignant']} real) to {FLAGS.out}")


if __name__ == "__main__":
  cli.run(main)
