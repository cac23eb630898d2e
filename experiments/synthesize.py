"""Synthetic nodules from a trained GAN -> a shard set for strategy=synthesis.

  python -m experiments.synthesize --gan_workdir G --out DIR [--label malignant|benign]
      [--num N | --per_real R] [--backgrounds malignant|benign|any]
      [--diameter MM | --diameter sample] [--seed S] [--batch_size B] [--data_dir SHARDS]

Defaults: the paper's set (malignant backgrounds re-painted malignant, 2 per real). The
GAN's config is read from its workdir. Writes, all at once when it is done (a killed run
leaves only DIR.partial): the shards (train split), synthesis.json, synthetic.png (a gallery,
red: the in-painted region) and the first patches as NIfTI; prints Table 1's Train+Syn line.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pathlib  # noqa: E402

from absl import app, flags  # noqa: E402
from experiments import cli  # noqa: E402


def write_nifti(folder: pathlib.Path, examples) -> None:
  """Patches as NIfTI (HU, 1×1×2 mm, in patient mm) for ITK-SNAP / 3D Slicer."""
  import SimpleITK as sitk

  from data_prep.patches import patch_image
  folder.mkdir(parents=True, exist_ok=True)
  for key, ex in examples:
    sitk.WriteImage(patch_image(ex["image"], ex["centre_mm"]), str(folder / f"{key}.nii.gz"))


def run(gan_workdir, data_dir: str, out, request=None, nifti: int = 8,
        progress: bool = True) -> dict:
  """Synthesises, writes the set, its gallery and NIfTI files; returns the summary."""
  from data_prep.figures import patch_gallery
  from nodule_jax import atomic
  from nodule_jax.input_pipeline import label_counts
  from nodule_jax.synthesize import (SUMMARY_FILE, Request, synthesize, train_syn_table,
                                     write_synthetic_set)
  out = pathlib.Path(out)
  examples, summary = synthesize(gan_workdir, data_dir, request or Request(), progress)
  table = train_syn_table(label_counts([data_dir]), examples)
  summary["table1"] = table
  with atomic.directory(out, SUMMARY_FILE) as tmp:
    write_synthetic_set(tmp, examples, summary)
    write_nifti(tmp / "nifti", examples[:nifti])
    patch_gallery([e for _, e in examples], str(tmp / "synthetic.png"),
                  contour="the in-painted region")
  print(f"wrote {summary['synthetic']} synthetic {summary['label']} patches (on "
        f"{summary['real_backgrounds']} real {summary['backgrounds']} backgrounds, nodules up "
        f"to {summary['max_diameter_mm']:g} mm) to {out} (figure: {out / 'synthetic.png'}, "
        f"NIfTI: {out / 'nifti'})\n{table}")
  return summary


def request_from_flags(FLAGS):
  """The flags' Request (usage errors for values the flags cannot mean)."""
  from data_prep.labels import CLASS_NAMES
  from nodule_jax.synthesize import Request
  diameter = FLAGS.diameter or None
  if diameter not in (None, "sample"):
    try:
      diameter = float(diameter)
    except ValueError:
      raise app.UsageError(f"--diameter={FLAGS.diameter!r}: a size in mm or 'sample'")
  if FLAGS.num is not None and FLAGS["per_real"].present:
    raise app.UsageError("give --num or --per_real, not both")
  return Request(label=CLASS_NAMES.index(FLAGS.label), backgrounds=FLAGS.backgrounds,
                 num=FLAGS.num, per_real=FLAGS.per_real, diameter=diameter, seed=FLAGS.seed,
                 batch_size=FLAGS.batch_size)


def main(argv):
  del argv
  cli.quiet_logs()
  FLAGS = flags.FLAGS
  data_dir = cli.gan_data_dir_or_phantom(FLAGS.data_dir, FLAGS.gan_workdir)
  with cli.requests_as_usage_errors():
    run(FLAGS.gan_workdir, data_dir, FLAGS.out, request_from_flags(FLAGS), FLAGS.nifti)


def define_flags() -> None:
  """The flags of this entry point (defined when it runs, so that others can import it)."""
  flags.DEFINE_string("gan_workdir", None, "The GAN training workdir.", required=True)
  flags.DEFINE_string("out", None, "Where the synthetic shards go.", required=True)
  flags.DEFINE_string("data_dir", "", "Real shards (default: the GAN's, else the phantom).")
  flags.DEFINE_enum("label", "malignant", ["malignant", "benign"], "The class to paint.")
  flags.DEFINE_enum("backgrounds", "malignant", ["malignant", "benign", "any"],
                    "Which real training patches are re-painted.")
  flags.DEFINE_integer("num", None, "How many synthetic patches (instead of --per_real).",
                       lower_bound=1)
  flags.DEFINE_float("per_real", 2.0, "Synthetic patches per real background (the paper: "
                     "463 for 233 malignant, about 2).", lower_bound=0.0)
  flags.DEFINE_string("diameter", "", "Nodule diameter in mm, or 'sample' (drawn from the "
                      "requested class's training diameters); default: each background's.")
  flags.DEFINE_integer("seed", 0, "Seed of the choice of backgrounds, diameters, holes and "
                       "noise; the same seed writes the same shards.")
  flags.DEFINE_integer("batch_size", 8, "Patches per jit'd call (rounded up to a multiple of "
                       "the local devices).", lower_bound=1)
  flags.DEFINE_integer("nifti", 8, "How many synthetic patches to write as NIfTI too.")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
