"""Binary classification metrics with stratified-bootstrap confidence intervals.

y: [N] 0 benign / 1 malignant; p: [N] predicted probability of malignant.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

METRICS = ("acc", "sen", "spe", "auc")


def binary_metrics(y, p, threshold: float = 0.5) -> dict[str, float]:
  """ACC, SEN (recall of malignant), SPE (recall of benign) at `threshold`, and AUC."""
  y, p = np.asarray(y).astype(int), np.asarray(p, float)
  pred = (p >= threshold).astype(int)
  pos, neg = y == 1, y == 0
  return dict(acc=float(np.mean(pred == y)),
              sen=float(np.mean(pred[pos] == 1)) if pos.any() else float("nan"),
              spe=float(np.mean(pred[neg] == 0)) if neg.any() else float("nan"),
              auc=float(roc_auc_score(y, p)) if pos.any() and neg.any() else float("nan"))


def youden_threshold(y, p) -> float:
  """The threshold maximising SEN + SPE - 1 (choose it on validation, apply it on test)."""
  fpr, tpr, thresholds = roc_curve(np.asarray(y).astype(int), np.asarray(p, float))
  t = float(thresholds[int(np.argmax(tpr - fpr))])
  return min(t, 1.0)


def _stratified_indices(y, rng):
  pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
  return np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])


def bootstrap_ci(y, p, threshold: float = 0.5, n: int = 2000, seed: int = 0,
                 level: float = 0.95) -> dict[str, tuple[float, float]]:
  """Percentile CIs of every metric over `n` resamples that keep the class counts."""
  y, p = np.asarray(y).astype(int), np.asarray(p, float)
  rng = np.random.default_rng(seed)
  samples = {m: [] for m in METRICS}
  for _ in range(n):
    idx = _stratified_indices(y, rng)
    for m, v in binary_metrics(y[idx], p[idx], threshold).items():
      samples[m].append(v)
  a = (1 - level) / 2
  return {m: (float(np.nanquantile(v, a)), float(np.nanquantile(v, 1 - a)))
          for m, v in samples.items()}


def paired_auc_difference(y, p_a, p_b, n: int = 2000, seed: int = 0, level: float = 0.95
                          ) -> tuple[float, float, float]:
  """AUC(b) - AUC(a) on the same patches, with a paired stratified-bootstrap CI.

  p_a, p_b: [N], or [K, N] for K paired models (e.g. networks): the mean difference over K,
  every model resampled with the same patches.
  """
  y = np.asarray(y).astype(int)
  p_a, p_b = np.atleast_2d(np.asarray(p_a, float)), np.atleast_2d(np.asarray(p_b, float))

  def diff(idx):
    return float(np.mean([roc_auc_score(y[idx], b[idx]) - roc_auc_score(y[idx], a[idx])
                          for a, b in zip(p_a, p_b)]))

  rng = np.random.default_rng(seed)
  diffs = [diff(_stratified_indices(y, rng)) for _ in range(n)]
  a = (1 - level) / 2
  return diff(np.arange(len(y))), float(np.quantile(diffs, a)), float(np.quantile(diffs, 1 - a))


def roc_figure(curves: dict[str, tuple], path: str, title: str = "ROC") -> None:
  """curves: name -> (y, p). Writes a PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(4.5, 4.5))
  for name, (y, p) in curves.items():
    fpr, tpr, _ = roc_curve(np.asarray(y).astype(int), np.asarray(p, float))
    ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, p):.3f})")
  ax.plot([0, 1], [0, 1], "k:", lw=0.8)
  ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1))
  ax.legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
