"""experiments.table2 on hand-made runs: seed means, paired CIs, the Mean row."""
import json

import numpy as np
import pytest

from nodule_jax import metrics, table2

Y = np.r_[np.ones(6), np.zeros(14)].astype(int)


def _run(root, strategy, arch, seed, prob, ids=None):
  d = root / strategy / arch / f"seed{seed}"
  d.mkdir(parents=True)
  (d / "metrics.json").write_text(json.dumps(dict(
      strategy=strategy, arch=arch, seed=seed, youden_threshold=0.3)))
  ids = ids or [f"n{i}" for i in range(len(Y))]
  metrics.write_predictions(d / "predictions_test.csv", dict(nodule_id=ids, label=Y, prob=prob))


def _cells(text, name):
  row = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
  return [c.strip() for c in row.strip("|").split("|")[1:]]


def test_rows_are_seed_means_with_paired_bootstrap_cis(tmp_path):
  rng = np.random.default_rng(0)
  a, b = rng.random((2, Y.size)).round(6)
  _run(tmp_path, "raw", "small", 0, a)
  _run(tmp_path, "raw", "small", 1, b)
  _run(tmp_path, "raw", "tiny", 0, a)
  runs = table2.collect(tmp_path)
  text = table2.format_table(runs, "at_0.5", n_boot=200)
  auc = lambda p: metrics.binary_metrics(Y, p)["auc"]
  small, tiny, mean = (_cells(text, n) for n in ("small", "tiny", "Mean"))
  assert small[3].startswith(f"{(auc(a) + auc(b)) / 2:.4f} ")
  assert mean[3].startswith(f"{((auc(a) + auc(b)) / 2 + auc(a)) / 2:.4f} ")
  # one seed: the CI is that run's own bootstrap CI; the same resamples for every run
  lo, hi = metrics.bootstrap_ci(Y, a, 0.5, n=200, seed=0)["auc"]
  assert tiny[3].endswith(f"({lo:.2f}–{hi:.2f})")
  samples = [metrics.bootstrap_samples(Y, p, 0.5, n=200, seed=0)["auc"] for p in (a, b)]
  lo, hi = metrics.percentile_ci(np.mean(samples, 0))
  assert small[3].endswith(f"({lo:.2f}–{hi:.2f})")
  table2.roc_figure(runs, tmp_path / "roc.png")
  assert (tmp_path / "roc.png").read_bytes()[:4] == b"\x89PNG"
  youden = table2.format_table(runs, "at_youden", n_boot=200)
  spe = metrics.binary_metrics(Y, a, 0.3)["spe"]
  assert _cells(youden, "tiny")[2].startswith(f"{spe:.4f} ")


def test_runs_on_different_test_patches_are_refused(tmp_path):
  _run(tmp_path, "raw", "small", 0, np.full(Y.size, 0.5))
  _run(tmp_path, "weighted", "small", 0, np.full(Y.size, 0.5),
       ids=[f"m{i}" for i in range(len(Y))])
  with pytest.raises(ValueError, match="different test patches"):
    table2.collect(tmp_path)
