"""Nodules -> labelled, split entries; the paper's Table 1 and the per-nodule CSV."""
from __future__ import annotations

import csv
import dataclasses
from typing import Mapping, Sequence

from data_prep.labels import LabelRule
from data_prep.nodules import Nodule
from data_prep.split import SPLITS, count_table, split_patients


@dataclasses.dataclass(frozen=True)
class LabelledNodule:
  nodule: Nodule
  label: int
  split: str


def label_and_split(nodules: Sequence[Nodule], rule: LabelRule, seed: int = 0,
           fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> list[LabelledNodule]:
  """Keeps the nodules `rule` accepts, labels them and splits them by patient."""
  kept = [n for n in nodules if rule.keeps(n.scores)]
  labels = [rule.label(n.scores) for n in kept]
  per_patient: dict[str, list[int]] = {}
  for n, y in zip(kept, labels):
    per_patient.setdefault(n.patient_id, []).append(y)
  splits = split_patients(per_patient, fractions, seed)
  return [LabelledNodule(n, y, splits[n.patient_id]) for n, y in zip(kept, labels)]


def format_table1(pairs: Sequence[tuple[str, int]], title: str = "") -> str:
  """(split, label) pairs -> the paper's Table 1 layout as a Markdown table."""
  table = count_table(pairs)
  lines = ([f"{title}", ""] if title else []) + [
      "| Subset | Benign (< 4) | Malignant (≥ 4) | Total |", "|---|---:|---:|---:|"]
  totals = [0, 0]
  for split in SPLITS:
    b, m = table[split][0], table[split][1]
    totals[0] += b
    totals[1] += m
    lines.append(f"| {split.capitalize()} | {b} | {m} | {b + m} |")
  lines.append(f"| All | {totals[0]} | {totals[1]} | {sum(totals)} |")
  return "\n".join(lines)


CSV_FIELDS = ("patient_id", "nodule_index", "nodule_id", "series_uid", "n_annotators",
              "malignancy_scores", "label", "diameter_mm", "centre_row", "centre_col",
              "centre_x_mm", "centre_y_mm", "centre_z_mm", "split")


def write_csv(entries: Sequence[LabelledNodule], path: str,
              origins: Mapping[str, tuple[float, float]] | None = None) -> None:
  """One row per nodule. Centre: (row, col) in the DICOM pixel grid and z in patient mm;
  x, y in patient mm for the series in `origins` (series UID -> in-plane origin), else empty."""
  origins = origins or {}
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, CSV_FIELDS)
    writer.writeheader()
    for e in entries:
      n = e.nodule
      x = y = ""
      if n.series_uid in origins:
        x, y = (f"{v:.2f}" for v in n.centre_mm(origins[n.series_uid])[:2])
      writer.writerow(dict(
          patient_id=n.patient_id, nodule_index=n.nodule_index, nodule_id=n.nodule_id,
          series_uid=n.series_uid, n_annotators=n.n_annotators,
          malignancy_scores=" ".join(map(str, n.scores)), label=e.label,
          diameter_mm=f"{n.diameter_mm:.2f}", centre_row=f"{n.centre_rc[0]:.2f}",
          centre_col=f"{n.centre_rc[1]:.2f}", centre_x_mm=x, centre_y_mm=y,
          centre_z_mm=f"{n.centre_z_mm:.2f}", split=e.split))
