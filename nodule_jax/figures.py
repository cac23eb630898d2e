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
from nodule_jax.inpaint import crop_batch, inpaint, working_shape
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

  Returns a batch dict: image, mask [N, 32, 64, 64, 1], label [N], diameter_mm [N].
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
                                                              "diameter_mm")})
    if chosen[0] and chosen[1]:
      examples = chosen[0] + chosen[1]
      return {k: np.stack([e[k] for e in examples]) for k in examples[0]}
  raise ValueError(f"no split of {data_dir} has both classes")


def class_figure(config, models, g_params, data_dir: str, path) -> pathlib.Path:
  """Rows: real patches; columns: real, masked input, in-painted as benign, as malignant.

  The same mask and noise for both labels, so only the class differs. Writes a PNG.
  """
  batch = crop_batch(fixed_examples(data_dir, config.figure_samples,
                                    max_diameter_mm=config.mask.max_diameter_mm),
                     working_shape(config))
  run = jax.jit(functools.partial(inpaint, config, models))
  rng = stream_key(config.seed, Stream.FIGURE)
  n = len(batch["label"])
  outs = [jax.device_get(run(g_params, batch, rng, np.full(n, c, np.int32))) for c in (0, 1)]
  centre = batch["image"].shape[1] // 2
  view = dict(cmap="gray", vmin=-1, vmax=1)
  titles = ["real", "masked input", "in-painted: benign", "in-painted: malignant"]
  fig = Figure(figsize=(8, 2 * n + 0.4))
  axes = fig.subplots(n, 4, squeeze=False)
  for i in range(n):
    panels = [batch["image"][i], outs[0]["masked"][i], outs[0]["fake"][i], outs[1]["fake"][i]]
    for j, p in enumerate(panels):
      axes[i, j].imshow(np.asarray(p)[centre, ..., 0], **view)
      axes[i, j].axis("off")
      if i == 0:
        axes[i, j].set_title(titles[j], fontsize=9)
    axes[i, 0].text(-4, batch["image"].shape[2] / 2,
                    f"{CLASS_NAMES[int(batch['label'][i])]}\n"
                    f"{float(batch['diameter_mm'][i]):.0f} mm", fontsize=8, ha="right",
                    va="center")
  fig.suptitle("Class-aware in-painting (centre axial slices, -1000..400 HU)", fontsize=10)
  fig.tight_layout()
  path = pathlib.Path(path)
  fig.savefig(path, dpi=80)
  return path


def gan_figure(config, g_params, workdir) -> pathlib.Path:
  """The class figure of a trained generator, `workdir/inpainting.png`.

  g_params: numpy (e.g. `sharding.host_copy` of the trained state's replicated parameters).
  """
  from nodule_jax.inpaint import build_models
  return class_figure(config, build_models(config), g_params, config.data.data_dir,
                      pathlib.Path(workdir) / "inpainting.png")


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
  the label swap per pair, faithfulness against the judge on real patches, the HU inside
  the hole, and examples (centre axial slices: real | asked benign | asked malignant)."""
  from nodule_jax.synthesis_metrics import to_hu
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
  faith = report["faithfulness"]
  x = np.arange(len(CLASS_NAMES))
  ax.bar(x - 0.2, [faith[n]["value"] for n in CLASS_NAMES], 0.4, label="synthetic: judged as asked")
  ax.bar(x + 0.2, [faith[n]["judge_on_real"] for n in CLASS_NAMES], 0.4,
         label="real validation: judged right")
  ax.set_xticks(x, [f"asked {n}" for n in CLASS_NAMES])
  ax.set(ylim=(0, 1.05), title="class faithfulness (judge's Youden threshold)")
  ax.title.set_fontsize(9)
  ax.legend(fontsize=7)
  ax = fig.add_subplot(grid[0, 2])
  hole, bins = arrays["hole"], np.linspace(-1000, 400, 57)
  for cls, name in enumerate(CLASS_NAMES):
    keep = arrays["true_label"] == cls
    ax.hist(to_hu(arrays["real"][keep][hole[keep]]), bins, density=True, histtype="step",
            ls="--", color=f"C{cls}", label=f"real {name}")
    ax.hist(to_hu(arrays[f"fake_{name}"][hole]), bins, density=True, histtype="step",
            color=f"C{cls}", label=f"asked {name}")
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
    ax.set_title(f"{CLASS_NAMES[int(arrays['true_label'][i])]} background: real | asked benign "
                 f"(p {arrays['p_benign'][i]:.2f}) | asked malignant (p {arrays['p_malignant'][i]:.2f})",
                 fontsize=7)
    ax.axis("off")
  fig.suptitle("Synthesis evaluation (red: the in-painted hole; -1000..400 HU)", fontsize=10)
  fig.tight_layout()
  path = pathlib.Path(path)
  fig.savefig(path, dpi=80)
  return path
