"""Is the GAN class-aware? Label swap, faithfulness, realism, reconstruction, diversity.

  python -m experiments.evaluate_synthesis --gan_workdir G --classifier C \
      [--split validation] [--draws 4] [--out DIR] [--data_dir SHARDS] [--every_checkpoint] \
      [--weights average|last]

C is a classifier run on real patches only (e.g. Table 2's raw run: `best/`, metrics.json,
predictions_validation.csv), or several, comma-separated (an ensemble, `nodule_jax.judge`);
it judges, it never trained the GAN. Prints the tables, writes
DIR/synthesis_evaluation.json and DIR/synthesis_evaluation.png (DIR defaults to G).
With --every_checkpoint, every checkpoint kept in G is evaluated, oldest first: the learning
curves of the evaluation's numbers go to TensorBoard (DIR/learning_curves) and
DIR/synthesis_evaluation_<step>.json. --weights last evaluates the last step's generator
weights instead of their moving average (what synthesis uses).
Several GAN workdirs (comma-separated, e.g. one config's seeds; --out required) are each
evaluated into DIR/<i>_<name>, and compared: which targets each meets and how often, the
headline numbers side by side (printed, and DIR/synthesis_evaluation_runs.json).
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pathlib  # noqa: E402

from absl import app, flags  # noqa: E402
from experiments import cli  # noqa: E402

REPORT, FIGURE = "synthesis_evaluation.json", "synthesis_evaluation.png"
RUNS_REPORT = "synthesis_evaluation_runs.json"


def run(gan_workdir, classifier, data_dir: str, out, splits=("validation",), draws: int = 4,
        seed: int = 0, step: int | None = None, report_name: str = REPORT,
        averaged: bool = True) -> dict:
  """Evaluates a checkpoint (the latest by default; its weights' moving average, or the
  last step's weights), prints the tables, writes the JSON and the figure; returns the
  report."""
  import json

  from nodule_jax import atomic, figures
  from nodule_jax.evaluate_synthesis import evaluate
  from nodule_jax.synthesis_report import format_report
  from nodule_jax.inpaint import load_generator
  from nodule_jax.judge import load_judge, workdirs
  out = pathlib.Path(out or gan_workdir)
  out.mkdir(parents=True, exist_ok=True)
  config, models, g_params, step = load_generator(gan_workdir, step, averaged)
  judge = load_judge(classifier)
  report, arrays = evaluate(config, models, g_params, judge, data_dir, splits, draws, seed)
  report.update(gan_workdir=str(gan_workdir), gan_step=step, gan_seed=int(config.seed),
                classifier=",".join(workdirs(classifier)))
  print(f"GAN step {step}:\n" + format_report(report))
  atomic.write_text(out / report_name, json.dumps(report, indent=1))
  figures.synthesis_evaluation_figure(report, arrays, out / FIGURE)
  print(f"wrote {out / report_name} and {out / FIGURE}")
  return report


def learning_curves(gan_workdir, classifier, data_dir: str, out, splits=("validation",),
                    draws: int = 4, seed: int = 0, averaged: bool = True) -> list[dict]:
  """`run` on every kept checkpoint, oldest first; the numbers as TensorBoard scalars."""
  from clu import metric_writers

  from nodule_jax.synthesis_report import curve_scalars
  from nodule_jax.inpaint import checkpoint_steps
  out = pathlib.Path(out or gan_workdir)
  writer = metric_writers.create_default_writer(str(out / "learning_curves"))
  reports = []
  for step in checkpoint_steps(gan_workdir):
    report = run(gan_workdir, classifier, data_dir, out, splits, draws, seed, step,
                 f"synthesis_evaluation_{step}.json", averaged)
    writer.write_scalars(step, curve_scalars(report))
    reports.append(report)
  writer.flush()
  return reports


def evaluate_latest(gan_workdir, classifier, data_dir: str, out, splits=("validation",),
                    draws: int = 4, seed: int = 0, averaged: bool = True,
                    every_checkpoint: bool = False) -> dict:
  """`run` on the latest checkpoint, or `learning_curves` on every kept one; the latest
  checkpoint's report."""
  if every_checkpoint:
    return learning_curves(gan_workdir, classifier, data_dir, out, splits, draws, seed,
                           averaged)[-1]
  return run(gan_workdir, classifier, data_dir, out, splits, draws, seed, averaged=averaged)


def compare_runs(gan_workdirs, classifier, data_dir: str, out, splits=("validation",),
                 draws: int = 4, seed: int = 0, averaged: bool = True,
                 every_checkpoint: bool = False) -> dict:
  """`evaluate_latest` on each GAN workdir into out/<i>_<name>, then their latest
  reports side by side (`across_runs`): printed and written to out/RUNS_REPORT. data_dir
  "": each run's own shards."""
  import json

  from nodule_jax import atomic
  from nodule_jax.synthesis_report import across_runs, format_across_runs
  out = pathlib.Path(out)
  reports = {}
  for i, workdir in enumerate(gan_workdirs):
    name = f"{i}_{pathlib.Path(workdir).name}"
    print(f"==== {name}: {workdir} ====")
    reports[name] = evaluate_latest(workdir, classifier,
                                    cli.gan_data_dir_or_phantom(data_dir, workdir), out / name,
                                    splits, draws, seed, averaged, every_checkpoint)
  summary = across_runs(reports)
  print(f"\n{len(reports)} GAN runs:\n" + format_across_runs(summary))
  atomic.write_text(out / RUNS_REPORT, json.dumps(summary, indent=1))
  print(f"wrote {out / RUNS_REPORT}")
  return summary


def main(argv):
  del argv
  cli.quiet_logs()
  FLAGS = flags.FLAGS
  workdirs, averaged = FLAGS.gan_workdir, FLAGS.weights == "average"
  if len(workdirs) > 1:
    if not FLAGS.out:
      raise app.UsageError("several --gan_workdir need --out: each run's report goes to "
                           "OUT/<i>_<name>, their comparison to OUT/" + RUNS_REPORT)
    compare_runs(workdirs, FLAGS.classifier, FLAGS.data_dir, FLAGS.out, FLAGS.split,
                 FLAGS.draws, FLAGS.seed, averaged, FLAGS.every_checkpoint)
    return
  evaluate_latest(workdirs[0], FLAGS.classifier,
                  cli.gan_data_dir_or_phantom(FLAGS.data_dir, workdirs[0]), FLAGS.out,
                  FLAGS.split, FLAGS.draws, FLAGS.seed, averaged, FLAGS.every_checkpoint)


def define_flags() -> None:
  """The flags of this entry point (defined when it runs, so that others can import it)."""
  flags.DEFINE_list("gan_workdir", None, "The GAN training workdir, or several, "
                    "comma-separated (compared: needs --out).", required=True)
  flags.DEFINE_string("classifier", None, "A classifier workdir trained on real patches "
                      "only (the judge), or several, comma-separated (an ensemble: "
                      "probabilities averaged, features side by side).", required=True)
  flags.DEFINE_list("split", ["validation"], "Splits whose patches are the backgrounds.")
  flags.DEFINE_integer("draws", 4, "In-paintings (holes and noise) per background.")
  flags.DEFINE_string("out", "", "Output folder (default: the GAN workdir).")
  flags.DEFINE_string("data_dir", "", "Real shards (default: the GAN's, else the phantom).")
  flags.DEFINE_integer("seed", 0, "Seed of the holes and noise.")
  flags.DEFINE_bool("every_checkpoint", False, "Evaluate every kept checkpoint (learning "
                    "curves in TensorBoard), not only the latest.")
  flags.DEFINE_enum("weights", "average", ["average", "last"], "The generator's weights: "
                    "their moving average (what synthesis uses) or the last step's.")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
