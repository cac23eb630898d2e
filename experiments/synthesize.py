"""Synthetic malignant nodules from a trained GAN -> a shard set for strategy=synthesis.

  python -m experiments.synthesize --gan_workdir DIR --out DIR [--per_real 2] [--data_dir SHARDS]

The GAN's config is read from its workdir. Writes the shards (train split), synthesis.json,
synthetic.png (a gallery, red: the in-painted region) and the first patches as NIfTI.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pathlib  # noqa: E402

from absl import flags  # noqa: E402
from experiments import cli  # noqa: E402

def write_nifti(folder: pathlib.Path, examples) -> None:
  """Patches as NIfTI (HU, 1×1×2 mm, in patient mm) for ITK-SNAP / 3D Slicer."""
  import SimpleITK as sitk

  from data_prep.patches import patch_image
  folder.mkdir(parents=True, exist_ok=True)
  for key, ex in examples:
    sitk.WriteImage(patch_image(ex["image"], ex["centre_mm"]), str(folder / f"{key}.nii.gz"))


def run(gan_workdir, data_dir: str, out, per_real: float = 2.0, seed: int = 0,
        nifti: int = 8) -> dict:
  """Synthesises, writes the set, its gallery and NIfTI files; returns the summary."""
  from data_prep.figures import patch_gallery
  from nodule_jax.synthesize import synthesize, write_synthetic_set
  out = pathlib.Path(out)
  examples, summary = synthesize(gan_workdir, data_dir, per_real, seed=seed)
  write_synthetic_set(out, examples, summary)
  write_nifti(out / "nifti", examples[:nifti])
  patch_gallery([e for _, e in examples], str(out / "synthetic.png"),
                contour="the in-painted region")
  print(f"wrote {summary['synthetic']} synthetic malignant patches (from "
        f"{summary['real_malignant']} real, nodules up to {summary['max_diameter_mm']:g} mm) to "
        f"{out} (figure: {out / 'synthetic.png'}, NIfTI: {out / 'nifti'})")
  return summary


def main(argv):
  del argv
  from nodule_jax.inpaint import gan_data_dir
  FLAGS = flags.FLAGS
  data_dir = FLAGS.data_dir or gan_data_dir(FLAGS.gan_workdir)
  run(FLAGS.gan_workdir, cli.data_dir_or_phantom(data_dir), FLAGS.out, FLAGS.per_real,
      FLAGS.seed, FLAGS.nifti)


def define_flags() -> None:
  """The flags of this entry point (defined when it runs, so that others can import it)."""
  flags.DEFINE_string("gan_workdir", None, "The GAN training workdir.", required=True)
  flags.DEFINE_string("out", None, "Where the synthetic shards go.", required=True)
  flags.DEFINE_string("data_dir", "", "Real shards (default: the GAN's, else the phantom).")
  flags.DEFINE_float("per_real", 2.0, "Synthetic patches per real malignant training patch "
                     "(the paper: 463 for 233, about 2).")
  flags.DEFINE_integer("seed", 0, "Seed of the choice of backgrounds, masks and noise.")
  flags.DEFINE_integer("nifti", 8, "How many synthetic patches to write as NIfTI too.")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
