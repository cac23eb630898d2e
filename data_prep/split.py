"""Patient-level train / validation / test split, stratified on malignant nodules."""
from __future__ import annotations

import collections
from typing import Mapping, Sequence

import numpy as np

SPLITS = ("train", "validation", "test")


def split_patients(patient_labels: Mapping[str, Sequence[int]],
                   fractions: Sequence[float] = (0.8, 0.1, 0.1),
                   seed: int = 0) -> dict[str, str]:
  """Assigns every patient to one split.

  Args:
    patient_labels: patient id -> labels (0/1) of that patient's nodules.
    fractions: target share of nodules for train, validation, test.
    seed: the split is a pure function of the patients, their labels and the seed.

  Patients with a malignant nodule are dealt first (most malignant first, ties in seeded
  order) to the split furthest below its share of malignant nodules; the rest likewise on
  all nodules. No patient is in two splits.
  """
  fractions = np.asarray(fractions, dtype=float)
  if fractions.shape != (3,) or np.any(fractions < 0) or not np.isclose(fractions.sum(), 1):
    raise ValueError(f"split fractions must be three non-negative numbers summing to 1, "
                     f"got {tuple(fractions)}")
  rng = np.random.default_rng(seed)
  patients = sorted(patient_labels)
  order = rng.permutation(len(patients))
  shuffled = [patients[i] for i in order]
  malignant = {p: int(sum(patient_labels[p])) for p in patients}
  assignment: dict[str, str] = {}
  for stratum, weight in (([p for p in shuffled if malignant[p]], malignant),
                          ([p for p in shuffled if not malignant[p]],
                           {p: len(patient_labels[p]) for p in patients})):
    stratum = sorted(stratum, key=lambda p: -weight[p])  # stable: seeded order within ties
    total = sum(weight[p] for p in stratum)
    filled = np.zeros(3)
    for p in stratum:
      deficit = fractions * total - filled
      k = int(np.argmax(deficit))
      filled[k] += weight[p]
      assignment[p] = SPLITS[k]
  return assignment


def count_table(rows: Sequence[tuple[str, int]]) -> dict[str, collections.Counter]:
  """(split, label) pairs -> {split: Counter({0: benign, 1: malignant})}."""
  table = {s: collections.Counter() for s in SPLITS}
  for split, label in rows:
    table[split][label] += 1
  return table
