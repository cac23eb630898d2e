"""data_prep.ratings: the radiologists' ratings against the class among nodules of one size."""
import itertools
import subprocess
import sys

import numpy as np
import pytest

from conftest import PHANTOM_PATIENTS
from data_prep.labels import LabelRule
from data_prep.ratings import CHARACTERISTICS, ratings_at_one_size


def test_ratings_at_one_size_against_a_loop_over_pairs():
  rng = np.random.default_rng(0)
  n = 40
  label = np.arange(n) % 3 == 0                               # 14 malignant, 26 benign
  diameter = rng.uniform(4, 20, n)
  ratings = rng.integers(1, 6, (n, len(CHARACTERISTICS))).astype(float)
  ratings[:, CHARACTERISTICS.index("spiculation")] = 1 + 4 * label   # tells the class exactly
  result = ratings_at_one_size(ratings, label.astype(int), diameter, width_mm=2.0)
  pairs = [(b, m) for b, m in itertools.product(np.flatnonzero(~label), np.flatnonzero(label))
           if abs(diameter[b] - diameter[m]) <= 2.0]
  assert len(pairs) > 10
  for j, name in enumerate(CHARACTERISTICS):
    signs = np.array([np.sign(ratings[m, j] - ratings[b, j]) for b, m in pairs])
    r = result[name]
    assert r["pairs"] == len(pairs)
    assert r["higher"] == pytest.approx(np.mean(signs > 0))
    assert r["lower"] == pytest.approx(np.mean(signs < 0))
    assert r["tied"] == pytest.approx(np.mean(signs == 0))
    wins = [np.sign(ratings[m, j] - ratings[b, j]) for b in np.flatnonzero(~label)
            for m in np.flatnonzero(label)]                   # AUC by Mann-Whitney
    assert r["auc"] == pytest.approx(np.mean([(w > 0) + 0.5 * (w == 0) for w in wins]))
  assert result["spiculation"]["higher"] == 1.0
  everything = result["all ratings"]
  assert everything["pairs"] == len(pairs) and everything["ordered"] == 1.0   # the regression
  assert everything["auc"] == 1.0                                           # finds it
  with pytest.raises(ValueError, match="at least 2 nodules of each class"):
    ratings_at_one_size(ratings, np.eye(1, n, dtype=int)[0], diameter, 2.0)   # 1 malignant


def test_the_command_on_three_real_lidc_patients():
  from data_prep.nodules import load_nodules
  rule = LabelRule()
  kept = [rule.label(n.scores) for n in load_nodules(list(PHANTOM_PATIENTS), progress=False)
          if rule.keeps(n.scores)]
  out = subprocess.run([sys.executable, "-m", "data_prep.ratings", "--patient_ids",
                        ",".join(PHANTOM_PATIENTS)], capture_output=True, text=True, check=True
                       ).stdout
  assert f"{kept.count(0)} benign and {kept.count(1)} malignant nodules" in out
  rows = [line for line in out.splitlines() if line.startswith("| ")][1:]
  assert [row.split(" | ")[0][2:] for row in rows] == list(CHARACTERISTICS)
  assert "All eight ratings (logistic regression" in out
