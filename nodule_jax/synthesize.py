"""Synthetic nodules from a trained in-painting GAN, as examples of the shard format.

As in the paper: backgrounds are real training patches of malignant nodules, the nodule is
masked out and re-painted as malignant with fresh noise and a jittered mask.
"""
from __future__ import annotations

import functools
import json
import pathlib

import jax
import numpy as np
import tensorflow_datasets as tfds

from data_prep.labels import MALIGNANT
from data_prep.tfds_builder import write_shards
from nodule_jax import input_pipeline
from nodule_jax.inpaint import crop_batch, inpaint, load_generator, paste, working_shape
from nodule_jax.intensity import hu_to_unit, unit_to_hu
from nodule_jax.rng import Stream, stream_key

SUMMARY_FILE = "synthesis.json"


def _sources(data_dir: str, label: int, max_diameter_mm: float) -> list[dict]:
  """The raw training examples (int16 HU image, ...) of class `label` whose nodules the GAN
  can cover (diameter up to `max_diameter_mm`, the largest it trained on)."""
  return [ex for ex in tfds.as_numpy(input_pipeline.load_split(data_dir, "train"))
          if int(ex["label"]) == label and ex["diameter_mm"] <= max_diameter_mm]


def synthesize(gan_workdir, data_dir: str, per_real: float = 2.0, batch_size: int = 8,
               seed: int = 0) -> tuple[list[tuple[str, dict]], dict]:
  """`per_real` × (#malignant training patches) synthetic malignant patches.

  Returns ((key, example) pairs of the shard features: image int16 HU [32, 64, 64], mask
  uint8 (the in-painted hole), label, ...; summary dict).
  """
  config, models, g_params, step = load_generator(gan_workdir)
  sources = _sources(data_dir, MALIGNANT, config.mask.max_diameter_mm)
  if not sources:
    raise ValueError(f"{data_dir} has no malignant training patches with nodules up to "
                     f"{config.mask.max_diameter_mm:g} mm (the GAN's mask.max_diameter_mm)")
  n = int(round(per_real * len(sources)))
  picks = np.random.default_rng(seed).choice(len(sources), n, replace=True)
  run = jax.jit(functools.partial(inpaint, config, models))
  shape = working_shape(config)
  examples = []
  for start in range(0, n, batch_size):
    chosen = [sources[i] for i in picks[start:start + batch_size]]
    full = np.stack([s["image"] for s in chosen])
    batch = {"image": hu_to_unit(full)[..., None],
             "mask": np.stack([s["mask"] for s in chosen]).astype(np.float32)[..., None],
             "label": np.full(len(chosen), MALIGNANT, np.int32),
             "diameter_mm": np.array([s["diameter_mm"] for s in chosen], np.float32)}
    result = jax.device_get(run(g_params, crop_batch(batch, shape),
                                stream_key(seed, Stream.SYNTHESIS, start)))
    images, holes = paste(full, unit_to_hu(result["fake"][..., 0]), result["mask"][..., 0] > 0)
    for j, src in enumerate(chosen):
      key = f"syn{start + j:05d}"
      examples.append((key, {
          "image": images[j], "mask": holes[j].astype(np.uint8),
          "label": MALIGNANT, "malignancy": np.zeros(0, np.int32), "n_annotators": 0,
          "diameter_mm": float(src["diameter_mm"]), "centre_mm": src["centre_mm"],
          "patient_id": src["patient_id"].decode(),
          "nodule_id": f"{key}_from_{src['nodule_id'].decode()}"}))
  summary = dict(gan_workdir=str(gan_workdir), gan_step=step, data_dir=str(data_dir),
                 real_malignant=len(sources), max_diameter_mm=float(config.mask.max_diameter_mm),
                 synthetic=n, seed=seed)
  return examples, summary


def write_synthetic_set(out_dir, examples: list[tuple[str, dict]], summary: dict) -> None:
  """A shard set with only a train split, and its summary (SUMMARY_FILE)."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  write_shards(out, {"train": lambda: iter(examples)}, description=json.dumps(summary))
  (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
