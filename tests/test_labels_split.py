import numpy as np
import pytest

from data_prep.labels import BENIGN, MALIGNANT, LabelRule, consensus_score
from data_prep.split import split_patients


@pytest.mark.parametrize("scores, rule, expected", [
    ([3, 4], "median", 3.5), ([2, 4, 5], "median", 4), ([1, 4, 4, 5], "mean", 3.5),
    ([3, 3, 4, 4], "majority", 4),      # tie goes to the higher score
    ([2, 2, 5], "majority", 2), ([4, 5, 3, 3], "majority", 3),
    ([4, 4, 1], "strict", 4), ([4, 1], "strict", 0), ([5, 5, 2, 2], "strict", 0),
])
def test_consensus_score_hand_cases(scores, rule, expected):
  assert consensus_score(scores, rule) == expected


def test_label_rule_threshold_and_filter():
  rule = LabelRule(min_annotators=3, rule="median")
  assert not rule.keeps([5, 5]) and rule.keeps([1, 2, 3])
  assert rule.label([4, 4, 3]) == MALIGNANT and rule.label([3, 3, 4]) == BENIGN


def test_label_rule_rejects_bad_options():
  with pytest.raises(ValueError, match="unknown label rule"):
    LabelRule(rule="mode")
  with pytest.raises(ValueError, match="min_annotators"):
    LabelRule(min_annotators=5)


def _patients(n=60, seed=0):
  rng = np.random.default_rng(seed)
  return {f"P{i:03d}": list((rng.random(rng.integers(1, 5)) < 0.2).astype(int))
          for i in range(n)}


def test_split_is_by_patient_deterministic_and_stratified():
  patients = _patients()
  a = split_patients(patients, seed=3)
  assert a == split_patients(patients, seed=3)
  assert a != split_patients(patients, seed=4)
  assert set(a) == set(patients)  # each patient exactly once
  malignant = {s: sum(sum(patients[p]) for p in patients if a[p] == s) for s in set(a.values())}
  total = sum(malignant.values())
  assert all(malignant[s] >= 1 for s in ("train", "validation", "test"))
  assert malignant["train"] / total == pytest.approx(0.8, abs=0.1)


def test_split_rejects_bad_fractions():
  with pytest.raises(ValueError, match="sum"):
    split_patients({"a": [0]}, fractions=(0.5, 0.5, 0.5))
