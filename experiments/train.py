"""Train a model from an ml_collections config; the config's `task` picks the trainer.

  python -m experiments.train --config configs/synthesis.py[:demo|:smoke] --workdir DIR \
      [--config.optim.lr=3e-4 ...]
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from experiments import cli  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Config file (path[:variant]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard logs and figures.", required=True)
flags.mark_flags_as_required(["config"])

TRAINERS = {"synthesis": "nodule_jax.train_synthesis", "classify": "nodule_jax.train_classifier"}


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax and tfds log every file at INFO
  from nodule_jax.sharding import maybe_initialize_distributed
  maybe_initialize_distributed()  # before anything touches devices
  import importlib

  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")  # tf.data only; leave accelerators to JAX
  config = flags.FLAGS.config
  if config.task not in TRAINERS:
    raise app.UsageError(f"config.task={config.task!r}; known: {sorted(TRAINERS)}")
  importlib.import_module(TRAINERS[config.task]).train_and_evaluate(config, flags.FLAGS.workdir)


if __name__ == "__main__":
  cli.run(main)
