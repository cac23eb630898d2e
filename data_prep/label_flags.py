"""Command-line flags shared by the data_prep entry points."""
from absl import flags

from data_prep.labels import RULES, LabelRule


def define_label_flags(split: bool = True) -> None:
  """The label rule's flags and --workers; with `split`, the patient split's too."""
  flags.DEFINE_integer("min_annotators", LabelRule.min_annotators,
                       "Keep nodules annotated by at least this many radiologists (1-4).")
  flags.DEFINE_enum("rule", LabelRule.rule, RULES,
                    "How annotators' malignancy scores make one label (malignant = score >= 4).")
  flags.DEFINE_integer("workers", None, "Worker processes (default: all cores).")
  if split:
    flags.DEFINE_integer("seed", 0, "Seed of the patient-level split.")
    flags.DEFINE_list("fractions", ["0.8", "0.1", "0.1"], "Train, validation, test fractions.")


def label_rule() -> LabelRule:
  return LabelRule(min_annotators=flags.FLAGS.min_annotators, rule=flags.FLAGS.rule)


def fractions() -> tuple[float, ...]:
  return tuple(float(f) for f in flags.FLAGS.fractions)
