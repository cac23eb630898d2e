"""The paper's Table 2 from a sweep's runs, as Markdown with 95% CIs (also table2.md), and
their test ROC curves (table2_roc.png).

  python -m experiments.table2 --workdir DIR [--baseline raw] [--bootstrap 2000]
"""
import pathlib

from absl import app, flags

from nodule_jax import atomic, table2


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  runs = table2.collect(FLAGS.workdir)
  if not runs:
    raise app.UsageError(f"no */*/seed*/metrics.json under {FLAGS.workdir}: run the sweep first")
  text = table2.report(runs, FLAGS.baseline, FLAGS.bootstrap)
  print(text)
  out = pathlib.Path(FLAGS.workdir) / "table2.md"
  atomic.write_text(out, text)
  table2.roc_figure(runs, out.with_name("table2_roc.png"))
  print(f"wrote {out} and {out.with_name('table2_roc.png')}")


def define_flags() -> None:
  """The flags of this entry point (defined when it runs, so that others can import it)."""
  flags.DEFINE_string("workdir", None, "The sweep's root.", required=True)
  flags.DEFINE_string("baseline", "raw", "Strategy the others are compared with (paired AUC).")
  flags.DEFINE_integer("bootstrap", 2000, "Stratified resamples of the test patches for the CIs.")


if __name__ == "__main__":
  define_flags()
  app.run(main)
