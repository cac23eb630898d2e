"""The paper's Table 2 from a sweep's runs, as Markdown with 95% CIs (also table2.md).

  python -m experiments.table2 --workdir DIR [--baseline raw]
"""
import json
import pathlib

from absl import app, flags

flags.DEFINE_string("workdir", None, "The sweep's root.", required=True)
flags.DEFINE_string("baseline", "raw", "Strategy the others are compared with (paired AUC).")
flags.DEFINE_integer("bootstrap", 2000, "Resamples for the paired AUC differences.")

ORDER = ("raw", "weighted", "synthesis")
TITLES = {"raw": "Raw", "weighted": "Raw + Weighted Loss", "synthesis": "Raw + Synthesis"}
COLS = ("acc", "sen", "spe", "auc")


def collect(workdir) -> dict:
  """{(strategy, arch): [metrics.json of each seed]}."""
  runs = {}
  for path in sorted(pathlib.Path(workdir).glob("*/*/seed*/metrics.json")):
    m = json.loads(path.read_text())
    m["dir"] = str(path.parent)
    runs.setdefault((m["strategy"], m["arch"]), []).append(m)
  return runs


def _cell(ms, col, at) -> str:
  vals = [m[at][col]["value"] for m in ms]
  lo = sum(m[at][col]["ci95"][0] for m in ms) / len(ms)
  hi = sum(m[at][col]["ci95"][1] for m in ms) / len(ms)
  return f"{sum(vals) / len(vals):.4f} ({lo:.2f}–{hi:.2f})"


def format_table(runs: dict, at: str = "at_0.5") -> str:
  strategies = [s for s in ORDER if any(k[0] == s for k in runs)]
  archs = sorted({k[1] for k in runs})
  lines = ["| Network | ACC | SEN | SPE | AUC |", "|---|---|---|---|---|"]
  for s in strategies:
    lines.append(f"| **{TITLES[s]}** | | | | |")
    rows = [(a, runs[(s, a)]) for a in archs if (s, a) in runs]
    for a, ms in rows:
      lines.append(f"| {a} | " + " | ".join(_cell(ms, c, at) for c in COLS) + " |")
    means = [sum(sum(m[at][c]["value"] for m in ms) / len(ms) for _, ms in rows) / len(rows)
             for c in COLS]
    lines.append("| Mean | " + " | ".join(f"{v:.4f}" for v in means) + " |")
  return "\n".join(lines)


def format_comparisons(runs: dict, baseline: str, n_boot: int) -> str:
  from nodule_jax import metrics as M
  from nodule_jax.train_classifier import read_predictions
  archs = sorted({k[1] for k in runs})
  lines = [f"| Strategy vs {TITLES.get(baseline, baseline)} | Network | ΔAUC (95% CI) |",
           "|---|---|---|"]
  for s in ORDER:
    if s == baseline:
      continue
    pairs, y = [], None
    for a in archs:
      if (s, a) not in runs or (baseline, a) not in runs:
        continue
      for mb, ms in zip(runs[(baseline, a)], runs[(s, a)]):  # seeds in the same order
        pb = read_predictions(pathlib.Path(mb["dir"]) / "predictions_test.csv")
        ps = read_predictions(pathlib.Path(ms["dir"]) / "predictions_test.csv")
        if pb["nodule_id"] != ps["nodule_id"]:
          raise ValueError(f"{mb['dir']} and {ms['dir']} predicted different test patches")
        y = pb["label"]
        pairs.append((pb["prob"], ps["prob"]))
        d, lo, hi = M.paired_auc_difference(y, pb["prob"], ps["prob"], n=n_boot)
        lines.append(f"| {TITLES[s]} | {a} (seed {ms['seed']}) | {d:+.4f} ({lo:+.3f} to {hi:+.3f}) |")
    if pairs:
      d, lo, hi = M.paired_auc_difference(y, [p[0] for p in pairs], [p[1] for p in pairs],
                                          n=n_boot)
      lines.append(f"| {TITLES[s]} | **Mean** | {d:+.4f} ({lo:+.3f} to {hi:+.3f}) |")
  return "\n".join(lines)


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  runs = collect(FLAGS.workdir)
  if not runs:
    raise app.UsageError(f"no */*/seed*/metrics.json under {FLAGS.workdir}: run the sweep first")
  text = ("## Table 2: test metrics at threshold 0.5 (95% CI, stratified bootstrap)\n\n"
          + format_table(runs) + "\n\n"
          + "## At the validation-chosen Youden threshold\n\n" + format_table(runs, "at_youden")
          + "\n\n## Paired bootstrap difference in test AUC\n\n"
          + format_comparisons(runs, FLAGS.baseline, FLAGS.bootstrap) + "\n")
  print(text)
  out = pathlib.Path(FLAGS.workdir) / "table2.md"
  out.write_text(text)
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
