"""Figures of the in-painting GAN: TensorBoard image grids and the class figure (PNG).

Matplotlib's object API (no pyplot, no backend to select): nothing happens at import.
"""
from __future__ import annotations

import functools
import pathlib

import jax
import numpy as np
import tensorflow_datasets as tfds
from matplotlib.figure import Figure

from data_prep.labels import CLASS_NAMES
from nodule_jax import input_pipeline
from nodule_jax.inpaint import crop_batch, inpaint, paste, working_shape
from nodule_jax.nodule_ratings import request_ratings, training_nodules
from nodule_jax.rng import Stream, stream_key


def _centre_slices(x) -> np.ndarray:
  """[B, D, H, W, 1] in [-1, 1] -> [B, H, W] centre axial slices in [0, 1]."""
  x = np.asarray(x)
  return (np.clip(x[:, x.shape[1] // 2, ..., 0], -1, 1) + 1) / 2


def inpainting_summary(out: dict, batch: dict) -> dict[str, np.ndarray]:
  """TensorBoard images per class: rows of [real | masked input | G1 | G2 composite] centre
  slices. out: `inpaint`'s dict; batch: image, label."""
  label = np.asarray(batch["label"])
  g1 = out["x1"] * out["mask"] + batch["image"] * (1 - out["mask"])
  columns = [_centre_slices(c) for c in (batch["image"], out["masked"], g1, out["fake"])]
  images = {}
  for cls, name in enumerate(CLASS_NAMES):
    rows = np.flatnonzero(label == cls)[:4]
    if rows.size:
      grid = np.concatenate([np.concatenate([c[i] for c in columns], 1) for i in rows], 0)
      images[f"inpainting/{name}"] = grid[None, ..., None]
  return images


def fixed_examples(data_dir: str, per_class: int, splits=("validation", "test", "train"),
                   max_diameter_mm: float = float("inf")) -> dict:
  """The first `per_class` benign and malignant patches (nodules up to `max_diameter_mm`)
  of the first split that has both.

  Returns a batch dict: image, mask [N, 32, 64, 64, 1], label [N], diameter_mm [N],
  ratings [N, 2].
  """
  for split in splits:
    try:
      batches = input_pipeline.eval_batches(data_dir, split, 64)
    except ValueError:
      continue
    chosen = {0: [], 1: []}
    for batch in tfds.as_numpy(batches):
      for i, label in enumerate(batch["label"]):
        if len(chosen[int(label)]) < per_class and batch["diameter_mm"][i] <= max_diameter_mm:
          chosen[int(label)].append({k: batch[k][i] for k in ("image", "mask", "label",
                                                              "diameter_mm", "ratings")})
    if chosen[0] and chosen[1]:
      examples = chosen[0] + chosen[1]
      return {k: np.stack([e[k] for e in examples]) for k in examples[0]}
  raise ValueError(f"no split of {data_dir} has both classes")


LUNG_WINDOW = dict(cmap="gray", vmin=-1000, vmax=400)
FIGURE2, FIGURE3 = "figure2_classes.png", "figure3_noise_and_size.png"


def _three_views(axes, hu: np.ndarray, hole: np.ndarray | None = None) -> None:
  """Axial, coronal and sagittal centre slices of hu [D, H, W] (1×1×2 mm voxels) on three
  axes, in a lung window; `hole` [D, H, W] outlined in red."""
  d, h, w = hu.shape
  views = ((hu[d // 2], None if hole is None else hole[d // 2], 1.0),
           (hu[:, h // 2], None if hole is None else hole[:, h // 2], 2.0),
           (hu[:, :, w // 2], None if hole is None else hole[:, :, w // 2], 2.0))
  for ax, (image, outline, aspect) in zip(axes, views):
    ax.imshow(image, aspect=aspect, **LUNG_WINDOW)
    if outline is not None and outline.any():
      ax.contour(outline, [0.5], colors="r", linewidths=0.5)
    ax.set_xticks([])
    ax.set_yticks([])


def _grid(rows: int, cells: int, title: str) -> tuple[Figure, np.ndarray]:
  """A figure of rows × cells tri-views: axes [rows, cells, 3]."""
  fig = Figure(figsize=(3.3 * cells, 1.25 * rows + 0.6))
  axes = fig.subplots(rows, 3 * cells, squeeze=False, gridspec_kw=dict(wspace=0.04, hspace=0.3))
  fig.suptitle(title, fontsize=10)
  return fig, axes.reshape(rows, cells, 3)


def _save(fig: Figure, path) -> pathlib.Path:
  path = pathlib.Path(path)
  fig.savefig(path, dpi=90, bbox_inches="tight")
  return path


def _judged(judge, images: np.ndarray) -> list[str]:
  """' · p 0.73' per image [N, D, H, W] in [-1, 1] (the judge's malignant probability), or ''."""
  if judge is None:
    return [""] * len(images)
  from nodule_jax.judge import judge_batches
  return [f" · p {p:.2f}" for p in judge_batches(judge, images[..., None])[0]]


def figure2(config, models, g_params, backgrounds: dict, path, judge=None, nodules=None
            ) -> pathlib.Path:
  """The paper's Fig. 2: each background in-painted as benign and as malignant with the
  same hole and noise (and, for a GAN conditioned on ratings, ratings drawn from
  `nodules`, `nodule_ratings.training_nodules`). backgrounds: full patches
  (`fixed_examples`). Rows: backgrounds;
  columns: real (red: the hole), asked benign, asked malignant; each an axial, coronal
  and sagittal view; with a judge, its malignant probability on each."""
  from nodule_jax.evaluate_synthesis import inpaint_both_classes
  from nodule_jax.synthesis_metrics import to_hu
  made = inpaint_both_classes(config, models, g_params, backgrounds, 1, config.seed,
                              nodules=nodules)
  columns = [backgrounds["image"][..., 0], made["fake_benign"], made["fake_malignant"]]
  probs = [_judged(judge, c) for c in columns]
  n = len(backgrounds["label"])
  fig, axes = _grid(n, 3, "In-painted as benign and as malignant: same background, hole and "
                          "noise (axial | coronal | sagittal, -1000..400 HU)")
  for i in range(n):
    real = f"real {CLASS_NAMES[int(backgrounds['label'][i])]}, " \
           f"{float(backgrounds['diameter_mm'][i]):.0f} mm"
    for j, name in enumerate((real, "asked benign", "asked malignant")):
      _three_views(axes[i, j], to_hu(columns[j][i]), made["hole_benign"][i] if j == 0 else None)
      axes[i, j, 1].set_title(name + probs[j][i], fontsize=8)
  return _save(fig, path)


def figure3(config, models, g_params, background: dict, path, label: int = 1,
            diameters=(6.0, 10.0, 14.0, 18.0), draws: int = 3, judge=None, nodules=None
            ) -> pathlib.Path:
  """The paper's Fig. 3 and size control: one background (a batch dict of one full
  patch, `fixed_examples`' keys), in-painted as `label` with `draws` noise draws (rows) at
  each requested diameter (columns); the hole grows with the diameter and always covers
  the background's nodule.
  The axial, coronal and sagittal centre slices without outlines (the nodule fills most
  of its hole). A GAN conditioned on ratings draws them from `nodules` with each key."""
  from nodule_jax.synthesis_metrics import to_hu
  k = len(diameters)
  batch = crop_batch({key: np.repeat(background[key], k, 0) for key in
                      ("image", "mask", "label", "diameter_mm", "ratings")},
                     working_shape(config))
  run = jax.jit(functools.partial(inpaint, config, models))
  full = np.repeat(background["image"][..., 0], k, 0)
  rows, textures = [], []
  labels, sizes = np.full(k, label, np.int32), np.asarray(diameters, np.float32)
  for draw in range(draws):
    key = stream_key(config.seed, Stream.FIGURE, draw)
    ratings = request_ratings(key, nodules, labels, sizes)
    out = jax.device_get(run(g_params, batch, key, labels, sizes, None, ratings))
    rows.append(paste(full, out["fake"][..., 0], out["mask"][..., 0] > 0)[0])
    textures.append([""] * k if ratings is None else
                    [f", texture {t:g}" for t in np.asarray(ratings)[:, 0]])
  probs = [_judged(judge, r) for r in rows]
  fig, axes = _grid(draws, k, f"One background ({CLASS_NAMES[int(background['label'][0])]}, "
                    f"{float(background['diameter_mm'][0]):.0f} mm) in-painted as "
                    f"{CLASS_NAMES[label]}: noise draws (rows) × requested diameter (columns)")
  for r in range(draws):
    for c, d in enumerate(diameters):
      _three_views(axes[r, c], to_hu(rows[r][c]))
      axes[r, c, 1].set_title(f"noise {r}, {CLASS_NAMES[label]} {d:g} mm{textures[r][c]}"
                              f"{probs[r][c]}",
                              fontsize=8)
  return _save(fig, path)


def default_diameters(max_diameter_mm: float, n: int = 4) -> tuple[float, ...]:
  """n sizes from 6 mm to 80% of the largest the GAN trained on, whole mm."""
  return tuple(float(d) for d in np.round(np.linspace(6.0, 0.8 * max_diameter_mm, n)))


def paper_figures(config, g_params, data_dir: str, out_dir, *, judge=None,
                  samples: int | None = None, label: int = 1, diameters=None, draws: int = 3
                  ) -> list[pathlib.Path]:
  """Figures 2 and 3 of a trained generator in `out_dir` (FIGURE2, FIGURE3): the first
  `samples` (default `config.figure_samples`) patches of each class, validation first;
  Fig. 3 on the one with the smallest nodule. g_params: numpy (e.g. `sharding.host_copy`).
  RequestError for a diameter outside what the GAN trained on."""
  from nodule_jax.inpaint import build_models
  from nodule_jax.inpaint import check_diameter
  max_d = float(config.mask.max_diameter_mm)
  diameters = tuple(diameters or default_diameters(max_d))
  for d in diameters:
    check_diameter(d, max_d)
  models = build_models(config)
  out_dir = pathlib.Path(out_dir)
  backgrounds = fixed_examples(data_dir, samples or config.figure_samples, max_diameter_mm=max_d)
  smallest = int(np.argmin(backgrounds["diameter_mm"]))
  one = {k: v[smallest:smallest + 1] for k, v in backgrounds.items()}
  nodules = training_nodules(config, data_dir)
  return [figure2(config, models, g_params, backgrounds, out_dir / FIGURE2, judge, nodules),
          figure3(config, models, g_params, one, out_dir / FIGURE3, label, diameters, draws,
                  judge, nodules)]


def classifier_roc(result: dict, workdir) -> pathlib.Path:
  """Test and validation ROC curves of a classifier run, `workdir/roc.png`.

  result: `train_classifier.train_and_evaluate`'s return (with its predictions)."""
  from nodule_jax import metrics
  auc = lambda d: metrics.binary_metrics(d["label"], d["prob"])["auc"]
  path = pathlib.Path(workdir) / "roc.png"
  metrics.roc_figure({f"{result['arch']}, {result['strategy']}": [
      (f"{name} (AUC {auc(result[name]):.3f})", result[name]["label"], result[name]["prob"], style)
      for name, style in (("test", "C0-"), ("validation", "C1--"))]}, str(path))
  return path


def synthesis_evaluation_figure(report: dict, arrays: dict, path, examples: int = 3
                                ) -> pathlib.Path:
  """The evaluation at a glance (`evaluate_synthesis.evaluate`'s report and arrays):
  the label swap per pair, the share judged malignant at every threshold for the requests
  of each class and for real nodules of that class in the same backgrounds, the HU inside
  the hole, and examples (centre axial slices: real | asked benign | asked malignant)."""
  fig = Figure(figsize=(13, 7))
  grid = fig.add_gridspec(2, 3, height_ratios=(1, 0.6))
  ax = fig.add_subplot(grid[0, 0])
  for cls, name in enumerate(CLASS_NAMES):
    keep = arrays["true_label"] == cls
    ax.scatter(arrays["p_benign"][keep], arrays["p_malignant"][keep], s=10, alpha=0.6,
               label=f"{name} backgrounds")
  ax.plot([0, 1], [0, 1], "k:", lw=1)
  swap = report["label_swap"]["all"]
  ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="judge p(malignant), asked benign",
         ylabel="judge p(malignant), asked malignant",
         title=f"label swap: Δp {swap['delta']:+.2f} ({swap['delta_ci95'][0]:+.2f} to "
               f"{swap['delta_ci95'][1]:+.2f}), higher {swap['share_higher']:.0%}")
  ax.title.set_fontsize(9)
  ax.legend(fontsize=7, loc="lower right")
  ax = fig.add_subplot(grid[0, 1])
  faith, grid_p = report["faithfulness"], np.linspace(0, 1, 201)
  for cls, name in enumerate(CLASS_NAMES):
    host = arrays[f"transplanted_host_{name}"]
    per_host = 1.0 / np.bincount(host)[host]           # each background weighted equally
    for p, weight, style, label in (
        (arrays[f"sized_p_{name}"], None, "-", f"asked {name}"),
        (arrays[f"transplanted_p_{name}"], per_host, "--", f"real {name}, transplanted")):
      above = np.average(p[None] >= grid_p[:, None], axis=1, weights=weight)
      ax.plot(grid_p, above, style, color=f"C{cls}", label=label)
  ax.axvline(report["judge"]["threshold"], color="k", ls=":", lw=1, label="Youden threshold")
  ranks = ", ".join(f"{n} {faith[n]['rank_vs_transplanted']:.2f}" for n in CLASS_NAMES)
  ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="threshold on the judge's p(malignant)",
         ylabel="share judged malignant",
         title=f"judged malignant by threshold (ranked against real: {ranks})")
  ax.title.set_fontsize(9)
  ax.legend(fontsize=7, loc="lower left")
  ax = fig.add_subplot(grid[0, 2])
  hole, bins = arrays["hole"], np.linspace(-1000, 400, 57)
  for cls, name in enumerate(CLASS_NAMES):
    ax.hist(arrays[f"real_hu_{name}"], bins, density=True, histtype="step",
            ls="--", color=f"C{cls}", label=f"real {name}")
    ax.hist(arrays[f"sized_hu_{name}"], bins, density=True, histtype="step", color=f"C{cls}",
            label=f"asked {name} (its sizes)")
  ax.set(xlabel="HU inside the hole", ylabel="density", title="intensities in the hole")
  ax.title.set_fontsize(9)
  ax.legend(fontsize=7)
  malignant = np.flatnonzero(arrays["true_label"] == 1)
  picks = np.linspace(0, len(arrays["real"]) - 1, examples).round().astype(int)
  if malignant.size and not np.isin(picks, malignant).any():   # show both classes
    picks[-1] = malignant[0]
  for j, i in enumerate(picks):
    ax = fig.add_subplot(grid[1, j])
    d = arrays["real"].shape[1] // 2
    strip = np.concatenate([arrays[k][i, d, 12:52, 12:52]
                            for k in ("real", "fake_benign", "fake_malignant")], 1)
    ax.imshow(strip, cmap="gray", vmin=-1, vmax=1)
    ax.contour(np.concatenate([hole[i, d, 12:52, 12:52]] * 3, 1), [0.5], colors="r",
               linewidths=0.5)
    ax.set_title(f"{CLASS_NAMES[int(arrays['true_label'][i])]} background: real | benign "
                 f"(p {arrays['p_benign'][i]:.2f}) | malignant (p {arrays['p_malignant'][i]:.2f})",
                 fontsize=7)
    ax.axis("off")
  fig.suptitle("Synthesis evaluation (red: the in-painted hole; -1000..400 HU)", fontsize=10)
  fig.tight_layout()
  path = pathlib.Path(path)
  fig.savefig(path, dpi=80)
  return path
