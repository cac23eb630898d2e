"""Synthetic nodule sets from a trained in-painting GAN, as shard sets.

The paper's set (the default `Request`): backgrounds are real training patches of malignant
nodules; each nodule is masked out and re-painted as malignant with fresh noise and a
jittered hole, 2 per real patch. A `Request` may ask for either class, on benign, malignant
or any backgrounds, a count, and a nodule size (fixed, or drawn from the requested class's
training diameters).

Example i of a set is made with the key `stream_key(seed, Stream.SYNTHESIS, i)` (its
`noise_seed` feature is i, the set's seed is in its summary), in a batch of its own under
`jax.vmap`: its hole and noise do not depend on the batch size (its values only by float
rounding), and a re-run writes the same shards byte for byte.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds
from tqdm import tqdm

from data_prep.labels import BENIGN, CLASS_NAMES, MALIGNANT
from data_prep.tfds_builder import write_shards
from nodule_jax import atomic, input_pipeline
from nodule_jax.inpaint import (RequestError, check_diameter, crop_batch, inpaint,
                                load_generator, paste, working_shape)
from nodule_jax.intensity import hu_to_unit, unit_to_hu
from nodule_jax.nodule_ratings import request_ratings, training_nodules
from nodule_jax.rng import Stream, stream_key
from nodule_jax.sharding import batch_sharding, local_mesh, replicated

SUMMARY_FILE = "synthesis.json"
BACKGROUNDS = {"malignant": (MALIGNANT,), "benign": (BENIGN,), "any": (BENIGN, MALIGNANT)}


@dataclasses.dataclass(frozen=True)
class Request:
  """What set to make.

  label: the class asked for. backgrounds: which real training patches are re-painted
  ("malignant", "benign", "any"). num: how many (None: per_real × the backgrounds).
  diameter: mm, "sample" (the requested class's training diameters), or None (each
  background nodule's own). The hole always covers the background's nodule as well.
  """
  label: int = MALIGNANT
  backgrounds: str = "malignant"
  num: int | None = None
  per_real: float = 2.0
  diameter: float | str | None = None
  seed: int = 0
  batch_size: int = 8


def training_patches(data_dir: str, max_diameter_mm: float) -> list[dict]:
  """The raw training examples (int16 HU image, uint8 consensus mask, ...) whose nodules the
  GAN can cover (diameter up to `max_diameter_mm`, the largest it trained on)."""
  return [ex for ex in tfds.as_numpy(input_pipeline.load_split(data_dir, "train"))
          if ex["diameter_mm"] <= max_diameter_mm]


def plan(request: Request, patches: list[dict], max_diameter_mm: float
         ) -> tuple[list[dict], np.ndarray, np.ndarray]:
  """(backgrounds, picks [N] indices into them, requested diameters [N] mm) for a request:
  a pure function of the request and the patches. RequestError for a request that cannot
  be met, before anything is computed."""
  if request.backgrounds not in BACKGROUNDS:
    raise RequestError(f"backgrounds={request.backgrounds!r}; known: {', '.join(BACKGROUNDS)}")
  if request.label not in (BENIGN, MALIGNANT):
    raise RequestError(f"label={request.label!r}; known: 0 (benign), 1 (malignant)")
  backgrounds = [p for p in patches if int(p["label"]) in BACKGROUNDS[request.backgrounds]]
  if not backgrounds:
    raise RequestError(f"no {request.backgrounds} training patches with nodules up to "
                     f"{max_diameter_mm:g} mm (the GAN's mask.max_diameter_mm)")
  n = request.num if request.num is not None else int(round(request.per_real * len(backgrounds)))
  if n < 1:
    raise RequestError(f"the request makes {n} patches: ask for num >= 1 or per_real > 0")
  rng = np.random.default_rng(request.seed)
  picks = rng.choice(len(backgrounds), n, replace=True)
  if request.diameter is None:
    diameters = np.array([backgrounds[i]["diameter_mm"] for i in picks], np.float32)
  elif request.diameter == "sample":
    pool = [p["diameter_mm"] for p in patches if int(p["label"]) == request.label]
    if not pool:
      raise RequestError(f"no {CLASS_NAMES[request.label]} training patches to sample "
                       "diameters from")
    diameters = rng.choice(np.asarray(pool, np.float32), n, replace=True)
  else:
    d = float(request.diameter)
    check_diameter(d, max_diameter_mm)
    diameters = np.full(n, d, np.float32)
  return backgrounds, picks, diameters


def _one_each(config, models, nodules, g_params, batch, keys, labels, diameters):
  """`inpaint` on each example of a batch alone (its own key): [B, ...] -> fake, mask,
  ratings [B, 2] (for a GAN conditioned on them, drawn from `nodules`
  (`nodule_ratings.nodule_table`) by class and size with the example's key; else NaN)."""
  def one(example, key, label, diameter):
    ratings = request_ratings(key, nodules, label[None], diameter[None],
                              jnp.full((1, 2), jnp.nan))
    out = inpaint(config, models, g_params, jax.tree.map(lambda v: v[None], example), key,
                  label[None], diameter[None], None, ratings)
    return out["fake"][0], out["mask"][0], ratings[0]
  return jax.vmap(one)(batch, keys, labels, diameters)


def _as_batch(patches: list[dict]) -> dict:
  """Raw shard examples -> image [B, 32, 64, 64, 1] in [-1, 1], consensus mask, diameter_mm."""
  return {"image": hu_to_unit(np.stack([p["image"] for p in patches]))[..., None],
          "mask": np.stack([p["mask"] for p in patches]).astype(np.float32)[..., None],
          "diameter_mm": np.array([p["diameter_mm"] for p in patches], np.float32)}


def _batches(n: int, size: int) -> Iterator[tuple[np.ndarray, int]]:
  """(indices [size], how many are real): 0..n-1 in batches, the last one padded by
  repeating its last index."""
  for start in range(0, n, size):
    valid = min(size, n - start)
    yield np.minimum(np.arange(start, start + size), start + valid - 1), valid


def synthesize(gan_workdir, data_dir: str, request: Request = Request(), progress: bool = True
               ) -> tuple[list[tuple[str, dict]], dict]:
  """Makes a synthetic set. Returns ((key, example) pairs of `features(synthetic=True)`:
  image int16 HU [32, 64, 64], mask uint8 (the in-painted hole), ...; summary dict)."""
  config, models, g_params, step = load_generator(gan_workdir)
  max_d = float(config.mask.max_diameter_mm)
  backgrounds, picks, diameters = plan(request, training_patches(data_dir, max_d), max_d)
  mesh = local_mesh()
  size = -(-request.batch_size // mesh.size) * mesh.size  # a multiple of the devices
  g_params = jax.device_put(g_params, replicated(mesh))
  nodules = training_nodules(config, data_dir)
  run = jax.jit(functools.partial(_one_each, config, models, nodules))
  base = stream_key(request.seed, Stream.SYNTHESIS)
  shape = working_shape(config)
  examples = []
  with tqdm(total=len(picks), desc="synthesis", unit="patch", disable=not progress) as bar:
    for idx, valid in _batches(len(picks), size):
      chosen = [backgrounds[picks[i]] for i in idx]
      full = np.stack([s["image"] for s in chosen])
      batch = crop_batch(_as_batch(chosen), shape)
      keys = jax.vmap(functools.partial(jax.random.fold_in, base))(jnp.asarray(idx))
      args = jax.device_put((batch, keys, np.full(len(idx), request.label, np.int32),
                             diameters[idx]), batch_sharding(mesh))
      fake, hole, ratings = jax.device_get(run(g_params, *args))
      images, holes = paste(full, unit_to_hu(fake[..., 0]), hole[..., 0] > 0)
      for j, i in enumerate(idx[:valid]):
        examples.append(_example(int(i), chosen[j], images[j], holes[j], request.label,
                                 float(diameters[i]), ratings[j]))
      bar.update(valid)
  summary = dict(gan_workdir=str(gan_workdir), gan_step=step, data_dir=str(data_dir),
                 label=CLASS_NAMES[request.label], backgrounds=request.backgrounds,
                 real_backgrounds=len(backgrounds), max_diameter_mm=max_d,
                 diameter=request.diameter, synthetic=len(examples), seed=request.seed)
  return examples, summary


def _example(i: int, source: dict, image, hole, label: int, diameter: float,
             ratings: np.ndarray) -> tuple[str, dict]:
  """One synthetic example; `ratings` [2] (texture, calcification) the generator was asked
  for, written as one or two annotators' with that median (none where NaN: a GAN not
  conditioned on them)."""
  key = f"syn{i:05d}"
  source_id = source["nodule_id"].decode()
  rating = lambda r: (np.zeros(0, np.int32) if np.isnan(r) else
                      np.unique([np.floor(r), np.ceil(r)]).astype(np.int32))
  return key, {
      "image": image, "mask": hole.astype(np.uint8), "label": label,
      "malignancy": np.zeros(0, np.int32), "n_annotators": 0, "diameter_mm": diameter,
      "texture": rating(ratings[0]), "calcification": rating(ratings[1]),
      "centre_mm": source["centre_mm"], "patient_id": source["patient_id"].decode(),
      "nodule_id": f"{key}_from_{source_id}", "synthetic": True, "source_id": source_id,
      "requested_label": label, "requested_diameter_mm": diameter, "noise_seed": i}


def train_syn_table(real_train: np.ndarray, examples: list[tuple[str, dict]]) -> str:
  """Table 1's Train and Train+Syn rows. real_train: [2] benign, malignant counts."""
  syn = np.bincount([int(ex["label"]) for _, ex in examples], minlength=2)
  rows = [("Train", real_train), ("Train+Syn", real_train + syn)]
  return "\n".join(["| Subset | Benign (< 4) | Malignant (≥ 4) | Total |", "|---|---:|---:|---:|"]
                   + [f"| {name} | {b} | {m} | {b + m} |" for name, (b, m) in rows])


def write_synthetic_set(out: pathlib.Path, examples: list[tuple[str, dict]], summary: dict
                        ) -> None:
  """A shard set with only a train split, and its summary (SUMMARY_FILE), in `out`."""
  write_shards(out, {"train": lambda: iter(examples)}, description=json.dumps(summary),
               synthetic=True)
  atomic.write_text(out / SUMMARY_FILE, json.dumps(summary, indent=1))
