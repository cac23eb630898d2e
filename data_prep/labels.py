"""Benign / malignant labels from radiologists' malignancy scores (paper: malignant = score ≥ 4)."""
from __future__ import annotations

import collections
import dataclasses
from typing import Sequence

import numpy as np

RULES = ("median", "mean", "majority", "strict")
BENIGN, MALIGNANT = 0, 1
CLASS_NAMES = ("benign", "malignant")


@dataclasses.dataclass(frozen=True)
class LabelRule:
  """Keep nodules with ≥ `min_annotators`; call malignant when `rule` gives a score ≥ 4.

  median: median score; mean: mean score; majority: most common score, ties to the higher;
  strict: more than half of the annotators scored ≥ 4.
  """
  min_annotators: int = 3
  rule: str = "strict"  # closest to the paper's Table 1 counts; see README

  def __post_init__(self):
    if self.rule not in RULES:
      raise ValueError(f"unknown label rule {self.rule!r}; choose one of {RULES}")
    if not 1 <= self.min_annotators <= 4:
      raise ValueError(f"min_annotators must be 1..4, got {self.min_annotators}")

  def keeps(self, scores: Sequence[int]) -> bool:
    return len(scores) >= self.min_annotators

  def label(self, scores: Sequence[int]) -> int:
    return MALIGNANT if consensus_score(scores, self.rule) >= 4 else BENIGN


def consensus_score(scores: Sequence[int], rule: str) -> float:
  """The single score `rule` makes of one nodule's annotator scores (strict: 4 or 0)."""
  scores = list(scores)
  if not scores:
    raise ValueError("a nodule needs at least one malignancy score")
  if rule == "median":
    return float(np.median(scores))
  if rule == "mean":
    return float(np.mean(scores))
  if rule == "majority":
    counts = collections.Counter(scores)
    top = max(counts.values())
    return float(max(s for s, c in counts.items() if c == top))
  if rule == "strict":
    return 4.0 if sum(s >= 4 for s in scores) * 2 > len(scores) else 0.0
  raise ValueError(f"unknown label rule {rule!r}; choose one of {RULES}")
