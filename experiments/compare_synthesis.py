"""Is one GAN config better than another? Their evaluations paired by seed.

  python -m experiments.compare_synthesis --base DIR[,DIR..] --other DIR[,DIR..] [--out FILE]

Each DIR is what `experiments.evaluate_synthesis --out DIR` wrote: one run's folder (it
holds synthesis_evaluation.json) or several runs' (one subfolder per run). The runs of each
side are paired by the seed their GAN trained with, and compared target by target: the
targets met per seed, the sign test over seeds, where each target is met by one side only
and how the headline numbers move. One seed's count is a draw (README, stop 25); this says
whether a change's total over seeds is more than one. Printed, and written as JSON to FILE.
"""
import json
import pathlib

from absl import app, flags

from experiments import cli
from experiments.evaluate_synthesis import REPORT


def report_files(folder) -> list[pathlib.Path]:
  """The evaluation reports in an evaluate_synthesis output folder: its own, or one per run
  subfolder. FileNotFoundError when there is none."""
  folder = pathlib.Path(folder)
  files = [folder / REPORT] if (folder / REPORT).exists() else sorted(folder.glob(f"*/{REPORT}"))
  if not files:
    raise FileNotFoundError(f"no {REPORT} in {folder} or its subfolders: evaluate the GAN "
                            "first (python -m experiments.evaluate_synthesis --gan_workdir G "
                            f"--classifier C --out {folder})")
  return files


def report_seed(report: dict, path) -> int:
  """The seed the report's GAN trained with: recorded in the report, or (reports written
  before it was) read from the GAN workdir's config."""
  from nodule_jax.inpaint import saved_config
  seed = report.get("gan_seed")
  if seed is None:
    config = saved_config(report.get("gan_workdir", ""))
    seed = config.seed if config is not None else None
  if seed is None:
    raise ValueError(f"{path}: the report has no gan_seed and its GAN workdir "
                     f"{report.get('gan_workdir')!r} has no config: cannot pair it by seed")
  return int(seed)


def reports_by_seed(folders) -> dict[int, dict]:
  """{GAN seed: report} over the folders; ValueError when two reports share a seed."""
  reports, where = {}, {}
  for path in (f for folder in folders for f in report_files(folder)):
    report = json.loads(path.read_text())
    seed = report_seed(report, path)
    if seed in reports:
      raise ValueError(f"seed {seed} twice on one side: {where[seed]} and {path}")
    reports[seed], where[seed] = report, path
  return reports


def main(argv):
  del argv
  from nodule_jax import atomic
  from nodule_jax.synthesis_report import format_paired, paired_by_seed
  FLAGS = flags.FLAGS
  try:
    comparison = paired_by_seed(reports_by_seed(FLAGS.base), reports_by_seed(FLAGS.other))
  except (FileNotFoundError, ValueError) as e:
    raise app.UsageError(str(e)) from None
  print(format_paired(comparison, FLAGS.base_name, FLAGS.other_name))
  if FLAGS.out:
    atomic.write_text(FLAGS.out, json.dumps(comparison, indent=1))
    print(f"wrote {FLAGS.out}")


def define_flags() -> None:
  flags.DEFINE_list("base", None, "Evaluation folders of the reference config's runs.",
                    required=True)
  flags.DEFINE_list("other", None, "Evaluation folders of the changed config's runs.",
                    required=True)
  flags.DEFINE_string("base_name", "base", "The reference config's name in the table.")
  flags.DEFINE_string("other_name", "other", "The changed config's name in the table.")
  flags.DEFINE_string("out", "", "Where to write the comparison as JSON (optional).")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
