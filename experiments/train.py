"""Train a model from an ml_collections config; the config's `task` picks the trainer.

  python -m experiments.train --config configs/synthesis.py[:demo|:smoke] --workdir DIR \
      [--config.optim.lr=3e-4 ...]

Without `--config.data.data_dir` the built-in phantom is used. At the end process 0 draws
the run's figures: the GAN's Figures 2 and 3 (figure2_classes.png, figure3_noise_and_size.png)
or the classifier's ROC (roc.png).
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from experiments import cli  # noqa: E402
from ml_collections import config_flags  # noqa: E402


def train(config, workdir: str):
  """Runs the config's trainer, then writes its figure (process 0)."""
  import jax

  from nodule_jax import figures
  from nodule_jax.sharding import host_copy
  if config.task == "synthesis":
    from nodule_jax.train_synthesis import train_and_evaluate
    state = train_and_evaluate(config, workdir)
    params = host_copy(state.g_average)  # every process: the arrays span all hosts
    if jax.process_index() == 0:
      for path in figures.paper_figures(config, params, config.data.data_dir, workdir):
        print(f"wrote {path}")
    return state
  if config.task == "classify":
    from nodule_jax.train_classifier import train_and_evaluate
    result = train_and_evaluate(config, workdir)
    if jax.process_index() == 0:
      figures.classifier_roc(result, workdir)
    return result
  raise app.UsageError(f"config.task={config.task!r}; known: synthesis, classify")


def main(argv):
  del argv
  cli.quiet_logs()
  from nodule_jax.sharding import maybe_initialize_distributed
  maybe_initialize_distributed()  # before anything touches devices
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")  # tf.data only; leave accelerators to JAX
  config = flags.FLAGS.config
  config.data.data_dir = cli.data_dir_or_phantom(config.data.data_dir)
  train(config, flags.FLAGS.workdir)


def define_flags() -> None:
  """The flags of this entry point (defined when it runs, so that others can import it)."""
  config_flags.DEFINE_config_file("config", None, "Config file (path[:variant]).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard logs and figures.",
                      required=True)
  flags.mark_flags_as_required(["config"])


if __name__ == "__main__":
  define_flags()
  cli.run(main)
