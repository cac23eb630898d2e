"""Kinetics .pth (3D-ResNets-PyTorch) -> an orbax checkpoint the classifier can start from.

  python -m experiments.port_kinetics --pth r3d50_K_200ep.pth --arch resnet-50 --out DIR
  python -m experiments.train --config configs/classify.py:arch=resnet-50 --config.init_from=DIR ...
"""
import json
import pathlib

from absl import app, flags


def main(argv):
  del argv
  from nodule_jax.checkpoint import Checkpointer
  from nodule_jax.port_kinetics import load_kinetics
  FLAGS = flags.FLAGS
  _, variables = load_kinetics(FLAGS.pth, FLAGS.arch, FLAGS.num_classes, FLAGS.in_channels)
  out = pathlib.Path(FLAGS.out)
  ckpt = Checkpointer(out)
  ckpt.save(0, {"params": variables["params"], "batch_stats": variables["batch_stats"]})
  ckpt.close()
  (out / "port.json").write_text(json.dumps(dict(pth=FLAGS.pth, arch=FLAGS.arch,
                                                 num_classes=FLAGS.num_classes,
                                                 in_channels=FLAGS.in_channels), indent=1))
  print(f"wrote {FLAGS.arch} ({FLAGS.num_classes} classes, {FLAGS.in_channels} channel) to {out}")


def define_flags() -> None:
  """The flags of this entry point (defined when it runs, so that others can import it)."""
  flags.DEFINE_string("pth", None, "The published .pth file.", required=True)
  flags.DEFINE_string("arch", None, "resnet-18/34/50/101/152 or resnext-101.", required=True)
  flags.DEFINE_string("out", None, "Output folder (an orbax checkpoint).", required=True)
  flags.DEFINE_integer("num_classes", 2, "Size of the new head.")
  flags.DEFINE_integer("in_channels", 1, "1: conv1's RGB weights summed for CT; 3: kept.")


if __name__ == "__main__":
  define_flags()
  app.run(main)
