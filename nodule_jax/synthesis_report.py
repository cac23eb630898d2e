"""The synthesis evaluation's report as people and tools read it: its Markdown tables, its
headline numbers for TensorBoard learning curves, and several runs' reports side by side
(one config's seeds: which targets each meets, how often). Pure functions of the report
dicts `nodule_jax.evaluate_synthesis.evaluate` returns (and writes as JSON)."""
from __future__ import annotations

import numpy as np
from scipy.stats import binomtest

from data_prep.labels import CLASS_NAMES
from nodule_jax import synthesis_metrics


def curve_scalars(report: dict) -> dict[str, float]:
  """The report's headline numbers, flat, for TensorBoard learning curves."""
  out = {"label_swap/delta": report["label_swap"]["all"]["delta"],
         "label_swap/share_higher": report["label_swap"]["all"]["share_higher"],
         "targets/met": float(sum(report["targets"].values()))}
  for name in CLASS_NAMES:
    out[f"faithfulness/{name}"] = report["faithfulness"][name]["value"]
    out[f"faithfulness_rank/{name}"] = report["faithfulness"][name]["rank_vs_transplanted"]
    out[f"faithfulness_at_background_size/{name}"] = (
        report["faithfulness_at_background_size"]["all"][name])
    out[f"kid/{name}"] = report["realism"][name]["kid"]["value"]
    for stat in ("p90", "share_above_minus400"):
      out[f"hu_{stat}/synthetic_{name}"] = report["hu_in_hole"][f"synthetic_{name}"][stat]
    out[f"stripes/synthetic_{name}"] = report["stripes"][name]["synthetic"]
  for name, rank in report.get("faithfulness_vs_training_copy", {}).items():
    out[f"faithfulness_rank_vs_training_copy/{name}"] = rank["value"]
  out["reconstruction/mae_hu"] = report["reconstruction"]["mae_hu"]
  return out


def across_runs(reports: dict[str, dict]) -> dict:
  """Several GAN runs' reports ({name: report}, e.g. one config's seeds) side by side: per
  target, which runs meet it and how many; per headline number (`curve_scalars`), each run's
  value and their mean, min and max. One run's count is a draw (README, stop 25): judge a
  change by how often each target is met."""
  names = list(reports)
  met = {t: [bool(reports[n]["targets"].get(t, False)) for n in names]
         for t in dict.fromkeys(t for r in reports.values() for t in r["targets"])}
  scalars = {n: curve_scalars(r) for n, r in reports.items()}
  headline = {}
  for key in scalars[names[0]]:
    values = [scalars[n][key] for n in names]
    headline[key] = {"values": values, "mean": float(np.mean(values)),
                     "min": float(np.min(values)), "max": float(np.max(values))}
  return {"runs": names, "targets": {t: {"met": m, "runs_meeting": int(sum(m))}
                                     for t, m in met.items()},
          "targets_met": [int(sum(met[t][i] for t in met)) for i in range(len(names))],
          "headline": headline}


def _row(first, cells, last) -> str:
  return f"| {first} | " + " | ".join(map(str, cells)) + f" | {last} |"


def format_across_runs(summary: dict) -> str:
  """`across_runs` as Markdown: targets met per run, then the headline numbers."""
  runs, n, row = summary["runs"], len(summary["runs"]), _row
  rule = "|---|" + "---:|" * (n + 1)
  lines = ["Targets (x: met):", "", row("target", runs, "met in"), rule]
  for target, entry in summary["targets"].items():
    lines.append(row(target, ["x" if ok else "" for ok in entry["met"]],
                     f"{entry['runs_meeting']} of {n}"))
  lines.append(row("**targets met**", map(str, summary["targets_met"]),
                   f"{sum(summary['targets_met'])} of {len(summary['targets']) * n}"))
  lines += ["", row("headline", runs, "mean (min–max)"), rule]
  for key, e in summary["headline"].items():
    lines.append(row(key, [f"{v:.3g}" for v in e["values"]],
                     f"{e['mean']:.3g} ({e['min']:.3g}–{e['max']:.3g})"))
  return "\n".join(lines)


def sign_test_p(wins: int, losses: int) -> float:
  """Exact two-sided sign test: the chance of a split at least as uneven as `wins` against
  `losses` (ties left out) if neither side were better. 1 with no untied pair."""
  n = wins + losses
  return float(binomtest(wins, n).pvalue) if n else 1.0


def paired_by_seed(base: dict[int, dict], other: dict[int, dict]) -> dict:
  """Two configs' reports ({GAN seed: report}) paired by seed: per seed, the targets each
  meets and their difference (other − base); wins, ties and losses with the sign test's
  p-value; per target, how many seeds meet it on each side and where only one side does;
  per headline number, the mean paired difference and how many seeds it rose. Seeds only
  one side has are listed, not compared. ValueError when no seed is shared."""
  seeds = sorted(set(base) & set(other))
  if not seeds:
    raise ValueError(f"no GAN seed in common: base has {sorted(base)}, other {sorted(other)}")
  met = lambda reports: [int(sum(reports[s]["targets"].values())) for s in seeds]
  base_met, other_met = met(base), met(other)
  difference = [o - b for b, o in zip(base_met, other_met)]
  wins, losses = sum(d > 0 for d in difference), sum(d < 0 for d in difference)
  names = dict.fromkeys(t for s in seeds for r in (base[s], other[s]) for t in r["targets"])
  targets = {}
  for t in names:
    b = [bool(base[s]["targets"].get(t, False)) for s in seeds]
    o = [bool(other[s]["targets"].get(t, False)) for s in seeds]
    targets[t] = {"base": sum(b), "other": sum(o),
                  "other_only": [s for s, x, y in zip(seeds, b, o) if y and not x],
                  "base_only": [s for s, x, y in zip(seeds, b, o) if x and not y]}
  base_scalars = [curve_scalars(base[s]) for s in seeds]
  other_scalars = [curve_scalars(other[s]) for s in seeds]
  headline = {}
  for key in (k for k in base_scalars[0] if all(k in o for o in other_scalars)):
    change = [o[key] - b[key] for b, o in zip(base_scalars, other_scalars)]
    headline[key] = {"mean_difference": float(np.mean(change)),
                     "seeds_higher": int(sum(c > 0 for c in change))}
  return {"seeds": seeds, "base_met": base_met, "other_met": other_met,
          "difference": difference, "wins": wins, "ties": len(seeds) - wins - losses,
          "losses": losses, "sign_test_p": sign_test_p(wins, losses),
          "unpaired": {"base": sorted(set(base) - set(other)),
                       "other": sorted(set(other) - set(base))},
          "targets": targets, "headline": headline}


def format_paired(comparison: dict, base_name: str = "base", other_name: str = "other") -> str:
  """`paired_by_seed` as Markdown: targets met per seed on each side, the sign test, then
  per target where the two sides differ."""
  c, seeds, row = comparison, comparison["seeds"], _row
  seeds_word = lambda n: f"{n} seed{'s' if n != 1 else ''}"
  lines = [row("seed", seeds, "all"), "|---|" + "---:|" * (len(seeds) + 1),
           row(f"{base_name}: targets met", c["base_met"], sum(c["base_met"])),
           row(f"{other_name}: targets met", c["other_met"], sum(c["other_met"])),
           row("difference", [f"{d:+d}" for d in c["difference"]], f"{sum(c['difference']):+d}"),
           "", f"{other_name} against {base_name}: better at {seeds_word(c['wins'])}, worse at "
           f"{seeds_word(c['losses'])}, tied at {seeds_word(c['ties'])}; "
           f"sign test p = {c['sign_test_p']:.3g} "
           f"(with {len(seeds)} seeds the smallest possible is "
           f"{sign_test_p(len(seeds), 0):.3g}).", "",
           f"| target | {base_name} | {other_name} | met only by {other_name} (seeds) "
           f"| met only by {base_name} (seeds) |", "|---|---:|---:|---|---|"]
  for target, e in c["targets"].items():
    if e["other_only"] or e["base_only"]:
      lines.append(f"| {target} | {e['base']} | {e['other']} | "
                   f"{', '.join(map(str, e['other_only']))} | "
                   f"{', '.join(map(str, e['base_only']))} |")
  lines += ["", f"| headline | mean change ({other_name} − {base_name}) | seeds higher |",
            "|---|---:|---:|"]
  lines += [f"| {key} | {e['mean_difference']:+.3g} | {e['seeds_higher']} of {len(seeds)} |"
            for key, e in c["headline"].items()]
  for side, missing in c["unpaired"].items():
    if missing:
      lines.append(f"\nNot compared (only {side} has them): seeds {missing}.")
  return "\n".join(lines)


def _by_size_table(title: str, count_title: str, by_class: dict, count,
                   copied: dict | None = None) -> list[str]:
  """Markdown rows of synthetic against real HU per class and size bin (`_hu_by_size`,
  `_factual_hu_by_size`) or texture group (`factual_hu_by_texture`), with `copied` (the
  training copy's `_hu_by_size`, same bins) a copy of the training set's between them;
  count: row -> its last cell."""
  kinds = "synthetic / copy / real" if copied else "synthetic / real"
  lines = ["", f"| {title} | > -400 HU {kinds} | p90 HU {kinds} | {count_title} |",
           "|---|---:|---:|---:|"]
  for name, rows in by_class.items():
    for i, r in enumerate(rows):
      cells = [r["synthetic"]] + ([copied[name][i]["synthetic"]] if copied else []) + [r["real"]]
      where = r["texture"] if "texture" in r else f"{r['from_mm']:g}–{r['to_mm']:g} mm"
      lines.append(f"| {name} {where} | "
                   + " / ".join(f"{c['share_above_minus400']:.1%}" for c in cells) + " | "
                   + " / ".join(f"{c['p90']:.0f}" for c in cells) + f" | {count(r)} |")
  return lines


def format_report(report: dict) -> str:
  """The report as Markdown tables."""
  judge, lines = report["judge"], []
  lines += [f"Judge: {judge['arch']} (threshold {judge['threshold']:.3f}; on real validation "
            f"patches SEN {judge['validation']['sen']:.3f}, SPE {judge['validation']['spe']:.3f}, "
            f"AUC {judge['validation']['auc']:.3f}). Backgrounds: {report['backgrounds']} "
            f"from {', '.join(report['splits'])} (nodules up to {report['max_diameter_mm']:g} mm; "
            f"{report['left_out_larger']} larger left out), {report['draws']} draws each.", "",
            "| label swap | Δp (95% CI) | malignant higher | pairs |", "|---|---|---:|---:|"]
  if judge.get("without_nodule"):
    lines[0] += " " + _without_nodule_sentence(judge["without_nodule"])
  for name, s in report["label_swap"].items():
    lines.append(f"| {name.replace('_', ' ')} | {s['delta']:+.3f} ({s['delta_ci95'][0]:+.3f} to "
                 f"{s['delta_ci95'][1]:+.3f}) | {s['share_higher']:.0%} | {s['pairs']} |")
  if "label_swap_real" in report:
    lines += ["", _real_pairs_line(report["label_swap_real"])]
  by_class = {k: d for k, d in report["faithfulness_at_background_size"].items() if k != "all"}
  if len(by_class) > 1:
    lines += ["", "Judged as asked at the background's size, by background class: " + "; ".join(
        f"{k.replace('_', ' ')}: " + ", ".join(f"asked {n} {v:.2f}" for n, v in d.items())
        for k, d in by_class.items()) + "."]
  sizes = "; ".join(f"{n} {lo:g}/{mid:g}/{hi:g}" for n, (lo, mid, hi)
                    in report["class_sizes_mm"].items())
  lines += ["", "Requests at each class's sizes (its backgrounds' diameters, p10/p50/p90 mm: "
            f"{sizes}); "
            "faithfulness at the background's own size for comparison:", "",
            "| requested | faithfulness | at background size | real nodules, same backgrounds "
            "(CI) | ranked against them (CI; 0.5: alike) | real patches | KID ×1e3 (floor) "
            "| Fréchet (floor) |",
            "|---|---:|---:|---:|---:|---:|---|---|"]
  fmt = lambda e, scale=1.0: "n/a" if e is None else (
      f"{e['value'] * scale:.2f} ({e['ci95'][0] * scale:.2f}–{e['ci95'][1] * scale:.2f})")
  for name in CLASS_NAMES:
    r, fa = report["realism"][name], report["faithfulness"][name]
    same = report["faithfulness_at_background_size"]["all"][name]
    lo, hi = fa["judge_on_transplanted_ci95"]
    rank_lo, rank_hi = fa["rank_vs_transplanted_ci95"]
    lines.append(f"| {name} | {fa['value']:.2f} | {same:.2f} | "
                 f"{fa['judge_on_transplanted']:.2f} ({lo:.2f}–{hi:.2f}) | "
                 f"{fa['rank_vs_transplanted']:.2f} ({rank_lo:.2f}–{rank_hi:.2f}) | "
                 f"{fa['judge_on_real']:.2f} | {fmt(r['kid'], 1e3)}; "
                 f"floor {fmt(r['kid_floor'], 1e3)} | "
                 f"{fmt(r['frechet'])}; floor {fmt(r['frechet_floor'])} |")
  lines += ["", "Judged as asked at the class's sizes, synthetic against real nodules "
            "transplanted into the same backgrounds, by background class: " + "; ".join(
                f"asked {name} on {host} backgrounds {e['value']:.2f} against "
                f"{e['judge_on_transplanted']:.2f} (ranked {e['rank_vs_transplanted']:.2f})"
                for name in CLASS_NAMES
                for host, e in report["faithfulness"][name]["by_background_class"].items()) + "."]
  lines += ["", "| inside the hole | mean HU | p90 HU | > -400 HU | > 200 HU |",
            "|---|---:|---:|---:|---:|"]
  for name, h in report["hu_in_hole"].items():
    lines.append(f"| {name.replace('_', ' ')} | {h['mean']:.0f} | {h['p90']:.0f} | "
                 f"{h['share_above_minus400']:.1%} | {h['share_above_200']:.1%} |")
  lines += _by_size_table("by size: asked (real)", "requests / real nodules",
                          report["hu_in_hole_by_size"],
                          lambda r: f"{r['n_synthetic']} / {r['n_real']}",
                          report.get("training_copy", {}).get("hu_in_hole_by_size"))
  lines += ["", "Stripes (share of the spectral energy inside the hole's box at ≥ "
            f"{synthesis_metrics.STRIPE_CYCLES:g} cycles per voxel; smooth tissue: a few "
            "percent): " + "; ".join(f"{name} synthetic {e['synthetic']:.1%}, real {e['real']:.1%}"
                                      for name, e in report["stripes"].items()) + "."]
  rec, div, inv = report["reconstruction"], report["diversity"], report["invariants"]
  lines += ["", f"Reconstruction (true label, inside the hole): MAE {rec['mae_hu']:.0f} HU, "
            f"PSNR {rec['psnr_db']:.1f} dB, SSIM {rec['ssim']:.3f}."]
  lines += _by_size_table("reconstructed by size (own class and size, same hole)",
                          "in-paintings", rec["hu_by_size"], lambda r: str(r["n"]))
  if "hu_by_texture" in rec:   # older reports lack it
    lines += _by_size_table("reconstructed by texture rating (own class and size, same hole)",
                            "in-paintings", rec["hu_by_texture"], lambda r: str(r["n"]))
  lines.append("")
  if div:
    lines.append("Diversity (draws of one background): " + "; ".join(
        f"{n}: pairwise L1 {d['pairwise_l1_hu']:.0f} HU, SSIM {d['pairwise_ssim']:.3f}"
        for n, d in div.items()) + ".")
  lines.append(f"Invariants: largest change outside the hole {inv['max_change_outside_hole']:g}; "
               f"values inside the HU window: {inv['inside_window']}.")
  baseline, average = report.get("training_copy"), report.get("training_average")
  if baseline:
    lines += ["", _training_copy_line(baseline)]
  if "faithfulness_vs_training_copy" in report:
    lines += ["", _against_training_copy_line(report)]
  if average:
    lines += ["", _training_average_line(average)]
  said = lambda t, base, what: (f" — {what}: {'met' if base['targets'][t] else 'missed'}"
                                if base and t in base["targets"] else "")
  lines += ["", "Targets:"] + [
      f"- [{'x' if ok else ' '}] {t}{said(t, baseline, 'a copy of the training set')}"
      f"{said(t, average, 'its average at the requests')}"
      for t, ok in report["targets"].items()]
  return "\n".join(lines)


def _without_nodule_sentence(empty: dict) -> str:
  """One sentence: the judge's AUC on the backgrounds with their nodules taken out."""
  lo, hi = empty["auc_ci95"]
  return (f"With each nodule's hole filled with flat lung its AUC on them is {empty['auc']:.2f} "
          f"({lo:.2f}–{hi:.2f}; whole {empty['auc_whole']:.2f}): what the context alone tells "
          "it, which no label swap can change.")


def _real_pairs_line(pairs: dict) -> str:
  """One sentence: how the judge orders real benign and malignant nodules of one size."""
  head = ("The label swap's real counterpart (the backgrounds' own nodules, benign against "
          f"malignant within {pairs['width_mm']:g} mm in diameter): ")
  if not pairs["pairs"]:
    return head + "no such pair."
  lo, hi = pairs["share_higher_ci95"]
  return (head + f"the malignant one scores higher in {pairs['share_higher']:.0%} "
          f"(95% CI {lo:.0%}–{hi:.0%}) of {pairs['pairs']} pairs of {pairs['nodules']} nodules, "
          f"mean Δp {pairs['delta']:+.3f}.")


def _training_average_line(average: dict) -> str:
  """One sentence: the hole HU of the training set's average nodule at the requests."""
  hu = average["hu_in_hole"]
  per_class = lambda key, spec: " / ".join(format(hu[f"synthetic_{n}"][key], spec)
                                           for n in CLASS_NAMES)
  return ("The training set's average nodule of each request's class and size (its "
          f"nodules' holes weighted by a Gaussian in diameter, {average['bandwidth_mm']:g} mm; "
          "benign / malignant): "
          f"> -400 HU {per_class('share_above_minus400', '.1%')}; p90 "
          f"{per_class('p90', '.0f')} HU.")


def _against_training_copy_line(report: dict) -> str:
  """One sentence: the requests ranked against the training copy's answers, and the judge's
  own gap between the training patches and the evaluated ones."""
  ranks = "; ".join(f"{n} {e['value']:.2f} ({e['ci95'][0]:.2f}–{e['ci95'][1]:.2f})"
                    for n, e in report["faithfulness_vs_training_copy"].items())
  judge = report["judge"]
  shares = lambda part: " / ".join(f"{judge[part][n]:.2f}" for n in CLASS_NAMES)
  return ("Ranked instead against the copy's answers to the same requests (same backgrounds, "
          "holes and sizes; 0.5: as much of its class as the training nodules it learnt "
          f"from): {ranks}. The judge's own verdict on real patches at its threshold "
          f"(specificity / recall): training {shares('on_training_real')}, evaluated "
          f"{shares('on_evaluated_real')}.")


def _training_copy_line(copy: dict) -> str:
  """One sentence: what a generator that copied the training set would score."""
  swap, hu = copy["label_swap"]["all"], copy["hu_in_hole"]
  per_class = lambda f: " / ".join(f(name) for name in CLASS_NAMES)
  return (
      "A copy of the training set (each request answered with a training nodule of its class "
      f"and nearest size, in the same hole; benign / malignant): Δp {swap['delta']:+.3f} "
      f"({swap['delta_ci95'][0]:+.3f} to {swap['delta_ci95'][1]:+.3f}), malignant higher in "
      f"{swap['share_higher']:.0%}; faithfulness "
      f"{per_class(lambda n: format(copy['faithfulness'][n]['value'], '.2f'))} (ranked "
      f"{per_class(lambda n: format(copy['faithfulness'][n]['rank_vs_transplanted'], '.2f'))}"
      "); > -400 HU "
      f"{per_class(lambda n: format(hu[f'synthetic_{n}']['share_above_minus400'], '.1%'))}; "
      f"p90 {per_class(lambda n: format(hu[f'synthetic_{n}']['p90'], '.0f'))} HU; KID ×1e3 "
      f"{per_class(lambda n: format(copy['realism'][n]['kid']['value'] * 1e3, '.0f'))}; "
      f"{sum(copy['targets'].values())} of {len(copy['targets'])} targets.")
