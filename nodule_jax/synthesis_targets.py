"""The class-control targets (the issue's): each a yes / no on an evaluation report
(`evaluate_synthesis.evaluate`'s layout)."""
from __future__ import annotations

from data_prep.labels import CLASS_NAMES


RANK_TOLERANCE = 0.1   # the "within 0.1" of faithfulness, averaged over thresholds


def targets(report: dict) -> dict[str, bool]:
  """The class-control targets (issue: class control), each True when met. Faithfulness is
  held to the real nodules transplanted into the same backgrounds threshold-free
  (`rank_against_transplants`): at the judge's one Youden threshold the verdict moved with
  the CPU the judge was trained on (README, stop 37)."""
  swap, hu = report["label_swap"]["all"], report["hu_in_hole"]
  out = {"label swap: delta > 0 with the 95% CI above 0": swap["delta_ci95"][0] > 0,
         "label swap: malignant request higher in >= 80% of pairs": swap["share_higher"] >= 0.8}
  for name, entry in report["faithfulness"].items():
    out[f"faithfulness {name} (at {name} sizes): ranked against real {name} nodules in the "
        f"same backgrounds within {RANK_TOLERANCE:g} of 0.5"] = (
        abs(entry["rank_vs_transplanted"] - 0.5) <= RANK_TOLERANCE)
  for name in CLASS_NAMES:
    out.update(hu_targets(hu, (name,)))
    floor, kid = report["realism"][name]["kid_floor"], report["realism"][name]["kid"]
    if floor is not None:   # within 3x, or (a floor near 0) not told apart from it
      out[f"KID {name} within 3x the real-vs-real floor"] = (
          kid["value"] <= 3 * max(floor["value"], 0.0) or kid["ci95"][0] <= floor["ci95"][1])
  return out


def hu_targets(hu: dict, names=CLASS_NAMES) -> dict[str, bool]:
  """Per class in `names`, whether the synthetic holes' share above -400 HU and p90 lie
  within the range of the real benign and real malignant ones. hu: real_<name> and
  synthetic_<name> `hu_stats`."""
  out = {}
  for name in names:
    for stat in ("share_above_minus400", "p90"):
      lo, hi = sorted(hu[f"real_{c}"][stat] for c in CLASS_NAMES)
      out[f"HU {stat} of synthetic {name} within the real range"] = (
          lo <= hu[f"synthetic_{name}"][stat] <= hi)
  return out
