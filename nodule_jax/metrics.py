"""Binary classification metrics with stratified-bootstrap confidence intervals.

y: [N] 0 benign / 1 malignant; p: [N] predicted probability of malignant.
"""
from __future__ import annotations

import csv
import io

import numpy as np
from matplotlib.figure import Figure
from scipy.stats import rankdata
from sklearn.metrics import roc_curve

from nodule_jax import atomic

METRICS = ("acc", "sen", "spe", "auc")


def _metric_rows(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
  """Every metric of every row at once. y, p: [R, N] -> {metric: [R]} (NaN where undefined).

  AUC is the Mann–Whitney statistic with average ranks for ties (= the area under the ROC).
  """
  pos, pred = y == 1, p >= threshold
  n_pos, n_neg = pos.sum(1), (~pos).sum(1)
  ranks = rankdata(p, axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return dict(acc=np.mean(pred == pos, 1),
                sen=(pred & pos).sum(1) / n_pos,
                spe=(~pred & ~pos).sum(1) / n_neg,
                auc=((ranks * pos).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_metrics(y, p, threshold: float = 0.5) -> dict[str, float]:
  """ACC, SEN (recall of malignant), SPE (recall of benign) at `threshold`, and AUC."""
  y, p = np.asarray(y).astype(int), np.asarray(p, float)
  return {m: float(v[0]) for m, v in _metric_rows(y[None], p[None], threshold).items()}


def youden_threshold(y, p) -> float:
  """The threshold maximising SEN + SPE - 1 (choose it on validation, apply it on test)."""
  fpr, tpr, thresholds = roc_curve(np.asarray(y).astype(int), np.asarray(p, float))
  t = float(thresholds[int(np.argmax(tpr - fpr))])
  return min(t, 1.0)


def bootstrap_samples(y, p, threshold: float = 0.5, n: int = 2000, seed: int = 0
                      ) -> dict[str, np.ndarray]:
  """Every metric on `n` resamples of the patches that keep the class counts: {metric: [n]}.

  The resamples depend only on (y, n, seed), so the samples of models evaluated on the same
  patches are paired: average them over seeds or subtract two strategies, then take
  `percentile_ci`.
  """
  y, p = np.asarray(y).astype(int), np.asarray(p, float)
  rng = np.random.default_rng(seed)
  pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
  idx = np.concatenate([rng.choice(pos, (n, pos.size)), rng.choice(neg, (n, neg.size))], 1)
  return _metric_rows(y[idx], p[idx], threshold)


def percentile_ci(samples, level: float = 0.95) -> tuple[float, float]:
  """[n] bootstrap samples -> (lo, hi), ignoring NaN (NaN if all are)."""
  samples, a = np.asarray(samples, float), (1 - level) / 2
  if np.isnan(samples).all():
    return float("nan"), float("nan")
  return float(np.nanquantile(samples, a)), float(np.nanquantile(samples, 1 - a))


def bootstrap_ci(y, p, threshold: float = 0.5, n: int = 2000, seed: int = 0,
                 level: float = 0.95) -> dict[str, tuple[float, float]]:
  """Percentile CIs of every metric over `n` stratified resamples."""
  return {m: percentile_ci(v, level)
          for m, v in bootstrap_samples(y, p, threshold, n, seed).items()}


def paired_auc_difference(y, p_a, p_b, n: int = 2000, seed: int = 0, level: float = 0.95
                          ) -> tuple[float, float, float]:
  """AUC(b) - AUC(a) on the same patches, with a paired stratified-bootstrap CI.

  p_a, p_b: [N], or [K, N] for K paired models (e.g. networks): the mean difference over K,
  every model resampled with the same patches.
  """
  p_a, p_b = np.atleast_2d(np.asarray(p_a, float)), np.atleast_2d(np.asarray(p_b, float))
  auc = lambda p: binary_metrics(y, p)["auc"]
  samples = lambda p: bootstrap_samples(y, p, n=n, seed=seed)["auc"]
  d = np.mean([auc(b) - auc(a) for a, b in zip(p_a, p_b)])
  diffs = np.mean([samples(b) - samples(a) for a, b in zip(p_a, p_b)], 0)
  return (float(d), *percentile_ci(diffs, level))


def roc_figure(panels: dict[str, list[tuple]], path: str) -> None:
  """ROC curves, one panel per title. panels: title -> [(label | None, y, p, line style)].
  Writes a PNG."""
  fig = Figure(figsize=(4.2 * len(panels), 4.4))
  axes = fig.subplots(1, len(panels), squeeze=False)
  for ax, (title, curves) in zip(axes[0], panels.items()):
    for label, y, p, style in curves:
      fpr, tpr, _ = roc_curve(np.asarray(y).astype(int), np.asarray(p, float))
      ax.plot(fpr, tpr, style, lw=1.4, alpha=0.8, label=label)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=90)


# ----------------------------------------------------------------- prediction files
def write_predictions(path, pred: dict) -> None:
  """pred: nodule_id [N] str, label [N], prob [N] -> CSV nodule_id, label, prob_malignant
  (written atomically)."""
  text = io.StringIO(newline="")
  writer = csv.writer(text)
  writer.writerow(["nodule_id", "label", "prob_malignant"])
  for nodule_id, label, prob in zip(pred["nodule_id"], pred["label"], pred["prob"]):
    writer.writerow([nodule_id, int(label), f"{float(prob):.6f}"])
  atomic.write_text(path, text.getvalue())


def read_predictions(path) -> dict:
  """The inverse of `write_predictions`: {nodule_id: [str], label: [N], prob: [N]}."""
  with open(path) as f:
    rows = list(csv.DictReader(f))
  return dict(nodule_id=[r["nodule_id"] for r in rows],
              label=np.array([int(r["label"]) for r in rows]),
              prob=np.array([float(r["prob_malignant"]) for r in rows]))
