"""The paper's figures of a trained GAN, as PNG files.

  python -m experiments.figures --gan_workdir G [--out DIR] [--classifier C] [--step S]
      [--samples 2] [--label malignant] [--diameters 6,10,14,18] [--draws 3] [--data_dir SHARDS]

Fig. 2 (figure2_classes.png): the same backgrounds in-painted as benign and as malignant,
same hole and noise. Fig. 3 (figure3_noise_and_size.png): one background (the smallest
nodule shown in Fig. 2), several noise draws × several requested diameters. Each panel is
an axial, coronal and sagittal centre slice in a lung window; with --classifier (a run on
real patches only, as in experiments.evaluate_synthesis) each is labelled with the judge's
malignant probability. DIR defaults to G. Training writes both at its end too.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pathlib  # noqa: E402

from absl import flags  # noqa: E402
from experiments import cli  # noqa: E402


def run(gan_workdir, data_dir: str, out=None, classifier=None, step=None, samples: int = 2,
        label: int = 1, diameters=None, draws: int = 3) -> list:
  """Writes Figures 2 and 3 of a checkpoint (the latest by default); returns their paths."""
  from nodule_jax import figures
  from nodule_jax.inpaint import load_generator
  config, _, g_params, step = load_generator(gan_workdir, step)
  judge = None
  if classifier:
    from nodule_jax.judge import load_judge
    judge = load_judge(classifier)
  out = pathlib.Path(out or gan_workdir)
  out.mkdir(parents=True, exist_ok=True)
  paths = figures.paper_figures(config, g_params, data_dir, out, judge=judge, samples=samples,
                                label=label, diameters=diameters, draws=draws)
  print(f"GAN step {step}: wrote " + " and ".join(map(str, paths)))
  return paths


def main(argv):
  del argv
  cli.quiet_logs()
  from data_prep.labels import CLASS_NAMES
  FLAGS = flags.FLAGS
  data_dir = cli.gan_data_dir_or_phantom(FLAGS.data_dir, FLAGS.gan_workdir)
  with cli.requests_as_usage_errors():
    run(FLAGS.gan_workdir, data_dir, FLAGS.out, FLAGS.classifier, FLAGS.step, FLAGS.samples,
        CLASS_NAMES.index(FLAGS.label), [float(d) for d in FLAGS.diameters], FLAGS.draws)


def define_flags() -> None:
  """The flags of this entry point (defined when it runs, so that others can import it)."""
  flags.DEFINE_string("gan_workdir", None, "The GAN training workdir.", required=True)
  flags.DEFINE_string("out", "", "Output folder (default: the GAN workdir).")
  flags.DEFINE_string("classifier", "", "A classifier workdir trained on real patches only "
                      "(or several, comma-separated: an ensemble): label each panel with its "
                      "malignant probability.")
  flags.DEFINE_integer("step", None, "The checkpoint (default: the latest).")
  flags.DEFINE_integer("samples", 2, "Fig. 2's backgrounds per class.", lower_bound=1)
  flags.DEFINE_enum("label", "malignant", ["malignant", "benign"], "Fig. 3's class.")
  flags.DEFINE_list("diameters", [], "Fig. 3's requested diameters in mm (default: 4 from "
                    "6 mm to 80% of the largest the GAN trained on).")
  flags.DEFINE_integer("draws", 3, "Fig. 3's noise draws.", lower_bound=1)
  flags.DEFINE_string("data_dir", "", "Real shards (default: the GAN's, else the phantom).")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
