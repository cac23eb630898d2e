"""The paper's Table 2 from a sweep's runs (`<strategy>/<arch>/seed<k>/`), as Markdown.

Every CI comes from the same stratified resamples of the test patches, so rows of several
seeds, the Mean row over networks and differences between strategies are paired bootstraps.
"""
import json
import pathlib

import numpy as np

from nodule_jax import metrics

ORDER = ("raw", "weighted", "synthesis")
TITLES = {"raw": "Raw", "weighted": "Raw + Weighted Loss", "synthesis": "Raw + Synthesis"}


def collect(workdir) -> dict:
  """{(strategy, arch): [run of each seed]}: run = metrics.json + "test", its test predictions.

  Every run must have predicted the same test patches (they are compared patch by patch).
  """
  runs, ids = {}, None
  for path in sorted(pathlib.Path(workdir).glob("*/*/seed*/metrics.json")):
    m = json.loads(path.read_text())
    m["dir"] = str(path.parent)
    m["test"] = metrics.read_predictions(path.parent / "predictions_test.csv")
    ids = ids or (m["test"]["nodule_id"], m["dir"])
    if m["test"]["nodule_id"] != ids[0]:
      raise ValueError(f"{m['dir']} and {ids[1]} predicted different test patches")
    runs.setdefault((m["strategy"], m["arch"]), []).append(m)
  return runs


def _mean(dicts: list[dict]) -> dict:
  return {k: np.mean([d[k] for d in dicts], 0) for k in dicts[0]}


def _seed_mean(ms: list[dict], at: str, n_boot: int) -> tuple[dict, dict]:
  """Mean over seeds of the test metrics ({metric: float}) and of their paired bootstrap
  samples ({metric: [n_boot]}), at threshold 0.5 or at each run's validation Youden threshold."""
  points, samples = [], []
  for m in ms:
    y, p = m["test"]["label"], m["test"]["prob"]
    t = 0.5 if at == "at_0.5" else m["youden_threshold"]
    points.append(metrics.binary_metrics(y, p, t))
    samples.append(metrics.bootstrap_samples(y, p, t, n=n_boot, seed=0))
  return _mean(points), _mean(samples)


def _row(name: str, point: dict, samples: dict) -> str:
  cells = []
  for c in metrics.METRICS:
    lo, hi = metrics.percentile_ci(samples[c])
    cells.append(f"{point[c]:.4f} ({lo:.2f}–{hi:.2f})")
  return f"| {name} | " + " | ".join(cells) + " |"


def format_table(runs: dict, at: str = "at_0.5", n_boot: int = 2000) -> str:
  """One block per strategy, a row per network (mean over seeds) and a Mean row (over
  networks); every CI from the same stratified resamples of the test patches."""
  strategies = [s for s in ORDER if any(k[0] == s for k in runs)]
  archs = sorted({k[1] for k in runs})
  lines = ["| Network | ACC | SEN | SPE | AUC |", "|---|---|---|---|---|"]
  for s in strategies:
    lines.append(f"| **{TITLES[s]}** | | | | |")
    rows = [_seed_mean(runs[(s, a)], at, n_boot) for a in archs if (s, a) in runs]
    names = [a for a in archs if (s, a) in runs]
    lines += [_row(a, *row) for a, row in zip(names, rows)]
    lines.append(_row("Mean", _mean([r[0] for r in rows]), _mean([r[1] for r in rows])))
  return "\n".join(lines)


def format_comparisons(runs: dict, baseline: str, n_boot: int) -> str:
  archs = sorted({k[1] for k in runs})
  lines = [f"| Strategy vs {TITLES.get(baseline, baseline)} | Network | ΔAUC (95% CI) |",
           "|---|---|---|"]
  for s in ORDER:
    if s == baseline:
      continue
    pairs = []
    for a in archs:
      if (s, a) not in runs or (baseline, a) not in runs:
        continue
      for mb, ms in zip(runs[(baseline, a)], runs[(s, a)]):  # seeds in the same order
        y = mb["test"]["label"]
        pairs.append((mb["test"]["prob"], ms["test"]["prob"]))
        d, lo, hi = metrics.paired_auc_difference(y, *pairs[-1], n=n_boot)
        lines.append(f"| {TITLES[s]} | {a} (seed {ms['seed']}) | {d:+.4f} ({lo:+.3f} to {hi:+.3f}) |")
    if pairs:
      d, lo, hi = metrics.paired_auc_difference(y, [p[0] for p in pairs], [p[1] for p in pairs],
                                          n=n_boot)
      lines.append(f"| {TITLES[s]} | **Mean** | {d:+.4f} ({lo:+.3f} to {hi:+.3f}) |")
  return "\n".join(lines)


def report(runs: dict, baseline: str = "raw", n_boot: int = 2000) -> str:
  """The whole table2.md: Table 2 at 0.5, at the Youden threshold, and ΔAUC vs `baseline`."""
  return ("## Table 2: test metrics at threshold 0.5 (95% CI, stratified bootstrap)\n\n"
          + format_table(runs, "at_0.5", n_boot) + "\n\n"
          + "## At the validation-chosen Youden threshold\n\n"
          + format_table(runs, "at_youden", n_boot)
          + "\n\n## Paired bootstrap difference in test AUC\n\n"
          + format_comparisons(runs, baseline, n_boot) + "\n")


def roc_figure(runs: dict, path) -> None:
  """Test ROC curves, one panel per network, one line style per strategy, one line per seed;
  the legend gives the seed-mean AUC. Writes a PNG."""
  panels = {}
  for a in sorted({k[1] for k in runs}):
    curves = panels.setdefault(a, [])
    for style, s in zip(("C0-", "C1--", "C2-."), ORDER):  # dashes keep overlaps visible
      ms = runs.get((s, a), [])
      auc = np.mean([metrics.binary_metrics(m["test"]["label"], m["test"]["prob"])["auc"]
                     for m in ms]) if ms else None
      curves += [(f"{TITLES[s]} (AUC {auc:.3f})" if i == 0 else None,
                  m["test"]["label"], m["test"]["prob"], style) for i, m in enumerate(ms)]
  metrics.roc_figure(panels, path)
