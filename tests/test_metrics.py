import numpy as np
import pytest

from nodule_jax import metrics


def test_binary_metrics_by_hand():
  y = [1, 1, 0, 0, 0]
  p = [0.9, 0.4, 0.6, 0.1, 0.2]
  m = metrics.binary_metrics(y, p, 0.5)
  assert m["acc"] == pytest.approx(3 / 5)
  assert m["sen"] == pytest.approx(1 / 2) and m["spe"] == pytest.approx(2 / 3)
  # pairs (pos, neg): 0.9 beats all 3; 0.4 beats 0.1, 0.2 -> 5 of 6
  assert m["auc"] == pytest.approx(5 / 6)


def test_youden_threshold_separates_a_separable_set():
  y = np.array([0, 0, 0, 1, 1])
  p = np.array([0.1, 0.2, 0.3, 0.35, 0.8])
  t = metrics.youden_threshold(y, p)
  m = metrics.binary_metrics(y, p, t)
  assert m["sen"] == 1.0 and m["spe"] == 1.0


def test_bootstrap_ci_brackets_the_estimate_and_is_seeded():
  rng = np.random.default_rng(0)
  y = np.r_[np.ones(30), np.zeros(120)].astype(int)
  p = np.clip(y * 0.3 + rng.normal(0.4, 0.2, y.size), 0, 1)
  point = metrics.binary_metrics(y, p)
  ci = metrics.bootstrap_ci(y, p, n=300, seed=1)
  assert ci == metrics.bootstrap_ci(y, p, n=300, seed=1)
  samples = metrics.bootstrap_samples(y, p, n=300, seed=1)
  wide = metrics.bootstrap_ci(y[::3], p[::3], n=300, seed=1)   # a third of the patches
  for k in metrics.METRICS:
    # the 2.5 and 97.5 percentiles of the resampled metric, around the point estimate
    assert ci[k] == pytest.approx(tuple(np.quantile(samples[k], [0.025, 0.975])))
    assert abs(np.median(samples[k]) - point[k]) < 0.05
    assert wide[k][1] - wide[k][0] > ci[k][1] - ci[k][0]   # fewer patches, wider interval


def test_paired_difference_of_identical_predictions_is_zero():
  rng = np.random.default_rng(0)
  y = np.r_[np.ones(20), np.zeros(60)].astype(int)
  p = rng.random(y.size)
  assert metrics.paired_auc_difference(y, p, p, n=100) == (0.0, 0.0, 0.0)
  better = np.where(y == 1, p + 0.5, p)
  d, lo, hi = metrics.paired_auc_difference(y, p, better, n=200)
  assert d > 0 and lo > 0


def _sklearn_metrics(y, p, t):
  """Reference: sklearn's AUC and confusion matrix."""
  from sklearn.metrics import confusion_matrix, roc_auc_score
  tn, fp, fn, tp = confusion_matrix(y, (p >= t).astype(int), labels=[0, 1]).ravel()
  return dict(acc=(tp + tn) / len(y), sen=tp / (tp + fn), spe=tn / (tn + fp),
              auc=roc_auc_score(y, p))


def test_bootstrap_samples_match_sklearn_on_the_same_resamples():
  rng = np.random.default_rng(3)
  y = np.r_[np.ones(7), np.zeros(13)].astype(int)
  p = np.round(rng.random(y.size), 1)                  # ties, as from a saturated net
  for k, v in _sklearn_metrics(y, p, 0.4).items():
    assert metrics.binary_metrics(y, p, 0.4)[k] == pytest.approx(v)
  samples = metrics.bootstrap_samples(y, p, 0.4, n=25, seed=5)
  draw = np.random.default_rng(5)                      # the documented resampling scheme
  idx = np.concatenate([draw.choice(np.flatnonzero(y == 1), (25, 7)),
                        draw.choice(np.flatnonzero(y == 0), (25, 13))], 1)
  for r in range(25):
    for k, v in _sklearn_metrics(y[idx[r]], p[idx[r]], 0.4).items():
      assert samples[k][r] == pytest.approx(v), (k, r)
