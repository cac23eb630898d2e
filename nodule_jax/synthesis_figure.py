"""The class-aware in-painting figure (the paper's Fig. 2): one background, both labels."""
from __future__ import annotations

import functools
import pathlib

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from nodule_jax import input_pipeline as ip  # noqa: E402


def fixed_examples(data_dir: str, per_class: int, splits=("validation", "test", "train")) -> dict:
  """The first `per_class` benign and malignant patches of the first split that has both.

  Returns a batch dict: image [N, 32, 64, 64, 1], label [N], diameter_mm [N].
  """
  for split in splits:
    try:
      ds = ip.load_split(data_dir, split, shuffle_files=False, seed=0)
    except ValueError:
      continue
    chosen = {0: [], 1: []}
    for ex in tfds.as_numpy(ds):
      if len(chosen[int(ex["label"])]) < per_class:
        chosen[int(ex["label"])].append(ex)
    if chosen[0] and chosen[1]:
      exs = chosen[0] + chosen[1]
      return {k: np.stack([e[k] for e in exs]) for k in ("image", "label", "diameter_mm")}
  raise ValueError(f"no split of {data_dir} has both classes")


def class_figure(config, models, g_params, data_dir: str, path) -> pathlib.Path:
  """Rows: real patches; columns: real, masked input, in-painted as benign, as malignant.

  The same mask and noise for both labels, so only the class differs.
  """
  from nodule_jax.train_synthesis import crop_batch, inpaint, patch_shape
  batch = crop_batch(fixed_examples(data_dir, config.figure_samples), patch_shape(config))
  run = jax.jit(functools.partial(inpaint, config, models))
  rng = jax.random.PRNGKey(config.seed + 12345)
  n = len(batch["label"])
  outs = [jax.device_get(run(g_params, batch, rng, np.full(n, c, np.int32))) for c in (0, 1)]
  centre = batch["image"].shape[1] // 2
  view = dict(cmap="gray", vmin=-1, vmax=1)
  titles = ["real", "masked input", "in-painted: benign", "in-painted: malignant"]
  fig, axes = plt.subplots(n, 4, figsize=(8, 2 * n + 0.4), squeeze=False)
  for i in range(n):
    panels = [batch["image"][i], outs[0]["masked"][i], outs[0]["fake"][i], outs[1]["fake"][i]]
    for j, p in enumerate(panels):
      axes[i, j].imshow(np.asarray(p)[centre, ..., 0], **view)
      axes[i, j].axis("off")
      if i == 0:
        axes[i, j].set_title(titles[j], fontsize=9)
    axes[i, 0].text(-4, batch["image"].shape[2] / 2, ("benign", "malignant")[int(batch["label"][i])] +
                    f"\n{float(batch['diameter_mm'][i]):.0f} mm", fontsize=8, ha="right",
                    va="center")
  fig.suptitle("Class-aware in-painting (centre axial slices, -1000..400 HU)", fontsize=10)
  fig.tight_layout()
  path = pathlib.Path(path)
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path
