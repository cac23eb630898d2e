"""Synthetic nodules from a trained in-painting GAN, written as a shard set (+ NIfTI, PNG).

As in the paper: backgrounds are real training patches of malignant nodules, the nodule is
masked out and re-painted as malignant with fresh noise and a jittered mask.
"""
from __future__ import annotations

import functools
import json
import pathlib

import jax
import numpy as np
import SimpleITK as sitk
import tensorflow_datasets as tfds

from data_prep.patches import PATCH_SPACING_XYZ
from nodule_jax import input_pipeline as ip
from nodule_jax import train_synthesis as ts
from nodule_jax.checkpoint import Checkpointer
from nodule_jax.sharding import make_mesh

MALIGNANT = 1


def unit_to_hu(x: np.ndarray) -> np.ndarray:
  """[-1, 1] -> int16 HU (the inverse of `hu_to_unit` inside the clip range)."""
  hu = (np.asarray(x, np.float32) + 1) / 2 * (ip.HU_MAX - ip.HU_MIN) + ip.HU_MIN
  return np.rint(hu).astype(np.int16)


def _sources(data_dir: str, label: int) -> list[dict]:
  builder = tfds.builder_from_directory(str(ip.shard_dir(data_dir)))
  return [ex for ex in tfds.as_numpy(builder.as_dataset(split="train"))
          if int(ex["label"]) == label]


def synthesize(gan_config, gan_workdir: str, data_dir: str, out_dir: str, per_real: float = 2.0,
               batch_size: int = 8, seed: int = 0, nifti: int = 8) -> dict:
  """Writes `per_real` × (#malignant training patches) synthetic malignant patches.

  Returns a summary dict (also written to OUT/synthesis.json).
  """
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  mesh = make_mesh(1)
  models = ts.build_models(gan_config)
  tx = ts.make_optimizer(gan_config.optim)
  ckpt = Checkpointer(pathlib.Path(gan_workdir) / "checkpoints")
  if ckpt.latest_step() is None:
    raise FileNotFoundError(f"no GAN checkpoint in {ckpt.directory}: train one with "
                            "`python -m experiments.train --config configs/synthesis.py:demo`")
  state, _ = ts.create_state(gan_config, models, tx, tx, mesh, ckpt)
  sources = _sources(data_dir, MALIGNANT)
  if not sources:
    raise ValueError(f"{data_dir} has no malignant training patches to start from")
  n = int(round(per_real * len(sources)))
  rng = np.random.default_rng(seed)
  picks = rng.choice(len(sources), n, replace=True)
  run = jax.jit(functools.partial(ts.inpaint, gan_config, models))
  shape = ts.patch_shape(gan_config)
  s0 = [(n - c) // 2 for n, c in zip(ts.FULL_PATCH, shape)]
  region = tuple(slice(a, a + c) for a, c in zip(s0, shape))  # the GAN's crop of a patch
  examples = []
  for start in range(0, n, batch_size):
    idx = picks[start:start + batch_size]
    batch = {"image": np.stack([ip.hu_to_unit(sources[i]["image"])[..., None] for i in idx]),
             "label": np.full(len(idx), MALIGNANT, np.int32),
             "diameter_mm": np.array([sources[i]["diameter_mm"] for i in idx], np.float32)}
    result = jax.device_get(run(state.g_params, ts.crop_batch(batch, shape),
                                jax.random.PRNGKey(seed * 100003 + start)))
    for j, i in enumerate(idx):
      src = sources[i]
      k = start + j
      image, mask = src["image"].copy(), np.zeros(ts.FULL_PATCH, np.uint8)
      inside = result["mask"][j, ..., 0] > 0  # only the hole is taken from the generator
      image[region][inside] = unit_to_hu(result["fake"][j, ..., 0])[inside]
      mask[region] = inside
      examples.append((f"syn{k:05d}", {
          "image": image, "mask": mask,
          "label": MALIGNANT, "malignancy": np.zeros(0, np.int32), "n_annotators": 0,
          "diameter_mm": float(src["diameter_mm"]), "centre_mm": src["centre_mm"],
          "patient_id": src["patient_id"].decode(),
          "nodule_id": f"syn{k:05d}_from_{src['nodule_id'].decode()}"}))
  from data_prep.tfds_builder import write_shards
  summary = dict(gan_workdir=str(gan_workdir), gan_step=int(state.step), data_dir=str(data_dir),
                 real_malignant=len(sources), synthetic=n, seed=seed)
  write_shards(out, {"train": lambda: iter(examples)}, description=json.dumps(summary))
  _write_nifti(out / "nifti", examples[:nifti])
  from data_prep.figures import patch_gallery
  patch_gallery([e for _, e in examples], str(out / "synthetic.png"),
                contour="the in-painted region")
  (out / "synthesis.json").write_text(json.dumps(summary, indent=1))
  return summary


def _write_nifti(folder: pathlib.Path, examples) -> None:
  """Patches as NIfTI (HU, 1×1×2 mm) for viewing in ITK-SNAP / 3D Slicer."""
  folder.mkdir(parents=True, exist_ok=True)
  for key, ex in examples:
    image = sitk.GetImageFromArray(ex["image"])
    image.SetSpacing(PATCH_SPACING_XYZ)
    image.SetOrigin([float(v) - (n - 1) / 2 * s for v, n, s in
                     zip(ex["centre_mm"], (64, 64, 32), PATCH_SPACING_XYZ)])
    sitk.WriteImage(image, str(folder / f"{key}.nii.gz"))
