"""The in-painting pass, shared by training, synthesis, figures, evaluation and insertion.

A batch of real patches -> hole masks -> generator inputs -> G1 -> G2 -> the composite
(G2 inside the hole, the real patch outside), and the crop and paste between the full patch
[32, 64, 64] (D, H, W) and the centre crop the GAN may work on (`working_shape`).
"""
from __future__ import annotations

import json
import pathlib
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data_prep.patches import PATCH_SHAPE
from nodule_jax.checkpoint import Checkpointer
from nodule_jax.masks import (MIN_HOLE_RADIUS_MM, check_box, generator_inputs, hole_radius_mm,
                              make_hole, sphere_mask)
from nodule_jax.models.critic import Critic
from nodule_jax.models.generator import Generator
from nodule_jax.nodule_ratings import check_names, rating_channels, rating_names
from nodule_jax.rng import InpaintKey, inpaint_key

CONFIG_FILE = "config.json"  # the GAN's config, saved in its workdir by the trainer
MIN_DIAMETER_MM = 3.0        # LIDC's smallest annotated nodules


class RequestError(ValueError):
  """A request the GAN cannot meet: a size, class, place or set it was not trained for."""


def check_diameter(diameter_mm: float, max_diameter_mm: float) -> None:
  """RequestError unless MIN_DIAMETER_MM ≤ diameter ≤ the GAN's `mask.max_diameter_mm`."""
  if not MIN_DIAMETER_MM <= diameter_mm <= max_diameter_mm:
    raise RequestError(f"diameter {diameter_mm:g} mm is outside what the GAN was trained on "
                       f"({MIN_DIAMETER_MM:g} to {max_diameter_mm:g} mm, its "
                       "mask.max_diameter_mm)")


def diameter_pools(label: np.ndarray, diameter_mm: np.ndarray, what: str) -> list[np.ndarray]:
  """[benign, malignant]: the diameters (mm) of each class's nodules (label, diameter_mm
  [N]); a class without any is a ValueError "no <class> <what>"."""
  pools = [diameter_mm[label == cls] for cls in (0, 1)]
  for pool, name in zip(pools, ("benign", "malignant")):
    if not len(pool):
      raise ValueError(f"no {name} {what}")
  return pools


class GanModels(NamedTuple):
  generator: Generator
  local: Critic
  global_: Critic


def build_models(config: ml_collections.ConfigDict) -> GanModels:
  m = config.model
  dtype = jnp.dtype(m.dtype)
  critic = lambda: Critic(widths=tuple(m.critic_widths), dtype=dtype)
  return GanModels(Generator(width=m.width, depth=m.depth, dilations=tuple(m.dilations),
                             attention=m.attention, dtype=dtype,
                             upsample=m.get("upsample", "subpixel")),  # older workdirs
                   critic(), critic())


# ----------------------------------------------------------------- shapes
def working_shape(config) -> tuple[int, int, int]:
  """(D, H, W) the GAN works on: the full patch, or its centre crop `config.data.crop`."""
  crop = tuple(config.data.crop)
  return crop if all(crop) else tuple(PATCH_SHAPE)


def centre_box(shape: Sequence[int], box: Sequence[int]) -> tuple[slice, slice, slice]:
  """Slices selecting the centre `box` (D, H, W) of an array of spatial `shape`."""
  return tuple(slice((n - b) // 2, (n - b) // 2 + b) for n, b in zip(shape, box))


def crop_centre(x, box: Sequence[int]):
  """[B, D, H, W, ...] (numpy, jax or tf) -> [B, *box, ...] around the patch centre."""
  return x[(slice(None), *centre_box(x.shape[1:4], box))]


def crop_batch(batch: dict, shape: Sequence[int]) -> dict:
  """Centre-crops every [B, D, H, W, C] entry of a batch to `shape`; other entries pass."""
  return {k: crop_centre(v, shape) if len(v.shape) == 5 else v for k, v in batch.items()}


def paste(full: np.ndarray, part: np.ndarray, hole: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Puts the hole of a centre-crop result back into full patches.

  full: [B, D, H, W] (any dtype); part, hole: [B, d, h, w] (the centre crop; hole boolean).
  Returns (image [B, D, H, W], hole [B, D, H, W] bool): `full` with the hole's voxels from
  `part`, every other voxel unchanged.
  """
  region = (slice(None), *centre_box(full.shape[1:4], part.shape[1:4]))
  image, full_hole = full.copy(), np.zeros(full.shape, bool)
  full_hole[region] = hole
  image[full_hole] = part[hole].astype(full.dtype)
  return image, full_hole


# ----------------------------------------------------------------- the pass
def check_config(config) -> None:
  """ValueError when D_local's box cannot hold the holes of the nodules the GAN trains on,
  a rating it is conditioned on is unknown, a critic's input does not halve `len(critic_widths)` times, or `mask.oversized` is not a
  share or is asked of a generator without the diameter channel."""
  if not 0.0 <= config.mask.oversized <= 1.0:
    raise ValueError(f"config.mask.oversized={config.mask.oversized}: expected the share of "
                     "samples whose hole is drawn for a larger nodule, in [0, 1]")
  if config.mask.oversized and not config.model.size_conditioning:
    raise ValueError(f"config.mask.oversized={config.mask.oversized} needs "
                     "model.size_conditioning=True: without the diameter channel the "
                     "generator cannot tell the nodule's size from its hole's")
  check_names(rating_names(config))
  factor = 2 ** len(config.model.critic_widths)
  for key, shape in (("model.local_box", config.model.local_box),
                     ("data.crop (the working shape)", working_shape(config))):
    if any(n % factor for n in shape):
      raise ValueError(f"config.{key} {tuple(shape)}: every size must be a multiple of "
                       f"{factor} (the critics halve it {len(config.model.critic_widths)} times)")
  check_box(config.model.local_box, working_shape(config), config.mask.max_diameter_mm,
            config.mask.margin_mm, config.mask.jitter, config.mask.shift_mm)


def inpaint_hole(config, batch: dict, rng: jax.Array, diameter_mm: jax.Array | None = None,
                 hole_diameter_mm: jax.Array | None = None):
  """The hole `inpaint` makes with the same `rng` (a `masks.Hole`): it covers the nodule and
  a sphere of the requested diameter (default: the nodule's own), or of `hole_diameter_mm`
  [B] where that is larger."""
  diameter = batch["diameter_mm"] if diameter_mm is None else diameter_mm
  if hole_diameter_mm is not None:
    diameter = jnp.maximum(diameter, hole_diameter_mm)
  return make_hole(inpaint_key(rng, InpaintKey.HOLE), jnp.maximum(diameter, batch["diameter_mm"]),
                   batch.get("mask"), batch["image"].shape[1:4], tuple(config.model.local_box),
                   margin_mm=config.mask.margin_mm, jitter=config.mask.jitter,
                   shift_mm=config.mask.shift_mm)


def requested_hole_voxels(config, diameter_mm: jax.Array, shape: Sequence[int]) -> jax.Array:
  """[B] voxels of the hole a nodule of `diameter_mm` [B] gets alone: the sphere at the
  jitter's mean scale (`losses.requested_fraction`)."""
  radius = jnp.maximum(hole_radius_mm(diameter_mm, config.mask.margin_mm,
                                      1 + config.mask.jitter / 2), MIN_HOLE_RADIUS_MM)
  return jnp.sum(sphere_mask(tuple(shape), radius), (1, 2, 3, 4))


def other_noise(rng: jax.Array) -> jax.Array:
  """A `noise_rng` for `inpaint`: the same hole as `rng` gives, other noise."""
  return inpaint_key(rng, InpaintKey.OTHER_NOISE)


def inpaint(config, models: GanModels, g_params, batch: dict, rng: jax.Array,
            label: jax.Array | None = None, diameter_mm: jax.Array | None = None,
            hole_diameter_mm: jax.Array | None = None, ratings: jax.Array | None = None,
            noise_rng: jax.Array | None = None) -> dict:
  """Hole, noise, G1, G2 on a batch of the working shape.

  batch: image [B, D, H, W, 1] in [-1, 1], label [B], diameter_mm [B], ratings [B, 2]
  (read only by a GAN conditioned on them, `rating_names`), and mask [B, D, H, W, 1] (the
  nodule's consensus mask; absent: no nodule to cover, the hole is a sphere on the
  centre). `label`, `diameter_mm` and `ratings` override the class, size and ratings asked
  for; `hole_diameter_mm` [B] grows the hole beyond them (`inpaint_hole`). `noise_rng`
  draws the hole's noise instead of `rng` (the same hole, other noise).
  Returns [B, D, H, W, 1] arrays: mask (the hole, 1 = in-painted; it covers the consensus
  mask dilated by the margin), masked (the input, noise in the hole), x1, x2 (G1's and G2's
  outputs), fake (x2 in the hole, the real patch outside); and box [B, 3] (D_local's corner).
  """
  k_noise = inpaint_key(rng, InpaintKey.NOISE) if noise_rng is None else noise_rng
  image = batch["image"]
  label = batch["label"] if label is None else label
  diameter = batch["diameter_mm"] if diameter_mm is None else diameter_mm
  hole = inpaint_hole(config, batch, rng, diameter, hole_diameter_mm)
  mask = hole.mask
  names = rating_names(config)
  if names:
    ratings = rating_channels(batch["ratings"] if ratings is None else ratings, names)
  masked, inputs = generator_inputs(image, mask, label, k_noise,
                                    diameter if config.model.size_conditioning else None,
                                    ratings if names else None)
  x1, x2 = models.generator.apply({"params": g_params}, inputs, mask, masked)
  return dict(mask=mask, masked=masked, x1=x1, x2=x2, fake=x2 * mask + image * (1 - mask),
              box=hole.start)


# ----------------------------------------------------------------- a trained generator
def saved_config(gan_workdir) -> ml_collections.ConfigDict | None:
  """The config a GAN was trained with, as its trainer saved it (None when its workdir
  holds none)."""
  config_file = pathlib.Path(gan_workdir) / CONFIG_FILE
  return (ml_collections.ConfigDict(json.loads(config_file.read_text()))
          if config_file.exists() else None)


def gan_data_dir(gan_workdir) -> str:
  """The shard folder a GAN was trained on ("" when its workdir holds no config)."""
  config = saved_config(gan_workdir)
  return config.data.data_dir if config is not None else ""


def load_generator(gan_workdir, step: int | None = None, averaged: bool = True
                   ) -> tuple[ml_collections.ConfigDict, GanModels, dict, int]:
  """(config, models, generator parameters, step) of a checkpoint in a GAN workdir (the
  latest when `step` is None): the weights' moving average (`ema_decay`), or with
  `averaged=False` the last step's weights."""
  workdir = pathlib.Path(gan_workdir)
  config = saved_config(workdir)
  if config is None:
    raise FileNotFoundError(f"no GAN checkpoint in {workdir} ({CONFIG_FILE} is missing): train one with "
                            "`python -m experiments.train --config configs/synthesis.py:demo "
                            f"--workdir {workdir}`")
  with Checkpointer(workdir / "checkpoints") as checkpointer:
    step = checkpointer.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no GAN checkpoint in {checkpointer.directory}: train one with "
                              "`python -m experiments.train --config configs/synthesis.py:demo`")
    saved = checkpointer.restore(None, step)
  key = "g_average" if averaged else "g_params"
  if key not in saved:
    print(f"The checkpoint at step {step} in {workdir} has no moving average of the weights "
          "(written before it was kept): using its last weights")
    key = "g_params"
  return config, build_models(config), saved[key], step


def checkpoint_steps(gan_workdir) -> list[int]:
  """The steps of the checkpoints kept in a GAN workdir, oldest first."""
  with Checkpointer(pathlib.Path(gan_workdir) / "checkpoints") as checkpointer:
    return sorted(checkpointer.all_steps())
