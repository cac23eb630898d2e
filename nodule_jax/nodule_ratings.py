"""The radiologists' ratings a generator may be conditioned on besides class and size.

LIDC-IDRI's annotators rate each nodule's texture (1 ground glass .. 5 solid) and
calcification (1..5 a pattern, 6 absent); the shards keep every annotator's, the input
pipeline their medians (`batch["ratings"]` [B, 2], in `RATINGS` order). Whether a nodule is
solid is not in the lung around it, so a generator asked only for a class and a size paints
the average of its solid and ground-glass nodules; given the rating, it can paint either.
A request that does not name the ratings draws them from the training nodules of its class
and size (`draw_ratings`).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nodule_jax import input_pipeline
from nodule_jax.rng import InpaintKey, inpaint_key

RATINGS = ("texture", "calcification")   # the columns of batch["ratings"]
RATING_WIDTH = 0.25    # how far apart two ratings' channels may be and still match (below)


def rating_names(config) -> tuple[str, ...]:
  """The ratings a GAN is conditioned on (`config.model.ratings`, comma-separated; none in
  older workdirs)."""
  names = config.model.get("ratings", "")
  return tuple(n.strip() for n in names.split(",") if n.strip())


def training_nodules(config, data_dir=None) -> np.ndarray | None:
  """For a GAN conditioned on ratings, the `nodule_table` its requests draw them from: the
  training nodules of `data_dir` (default: those it trained on); None for other GANs."""
  if not rating_names(config):
    return None
  return nodule_table(data_dir or config.data.data_dir, config.mask.max_diameter_mm)


def check_names(names: Sequence[str]) -> None:
  """ValueError for a rating name not in RATINGS."""
  unknown = [n for n in names if n not in RATINGS]
  if unknown:
    raise ValueError(f"config.model.ratings: unknown {unknown}; known: {', '.join(RATINGS)}")


def rating_channels(ratings: jax.Array, names: Sequence[str]) -> jax.Array:
  """[B, 2] median ratings (RATINGS order) -> [B, len(names)] in [-1, 1]: texture
  (t - 3) / 2 (-1 ground glass, +1 solid), calcification +1 calcified (median below 6),
  -1 not."""
  ratings = jnp.asarray(ratings, jnp.float32)
  columns = {"texture": (ratings[:, 0] - 3.0) / 2.0,
             "calcification": jnp.where(ratings[:, 1] < 6.0, 1.0, -1.0)}
  return jnp.stack([columns[n] for n in names], -1) if names else ratings[:, :0]


def nodule_table(data_dir, max_diameter_mm: float) -> np.ndarray:
  """[N, 4] (label, diameter_mm, texture, calcification) of the training nodules up to
  `max_diameter_mm`, in shard order (the rows of `gan_requests.nodule_hole_table`); a
  ValueError when a nodule has no ratings (a synthetic set) or a class has no nodule."""
  rows = input_pipeline.nodule_rows(input_pipeline.as_list(data_dir))
  rows = rows[rows[:, 1] <= max_diameter_mm]
  if np.isnan(rows[:, 2:]).any():
    raise ValueError(f"training nodules in {data_dir} without texture or calcification "
                     "ratings: the ratings are drawn from real nodules' (a synthetic set "
                     "has none)")
  for cls, name in enumerate(("benign", "malignant")):
    if not (rows[:, 0] == cls).any():
      raise ValueError(f"no {name} training nodule up to {max_diameter_mm:g} mm in "
                       f"{data_dir} to draw ratings from")
  return rows


def class_size_logits(table: jax.Array, label: jax.Array, diameter_mm: jax.Array,
                      bandwidth_mm: float) -> jax.Array:
  """[B, N] log-weights of each training nodule for each request: a Gaussian in diameter
  (width `bandwidth_mm`) over the nodules of the requested class, -inf for the others.
  table: [N, >= 2] (label, diameter_mm, ...); label, diameter_mm: [B]."""
  table = jnp.asarray(table)
  same = table[None, :, 0] == label[:, None].astype(table.dtype)
  closeness = -0.5 * ((table[None, :, 1] - diameter_mm[:, None]) / bandwidth_mm) ** 2
  return jnp.where(same, closeness, -jnp.inf)


def draw_ratings(rng, table: jax.Array, label: jax.Array, diameter_mm: jax.Array,
                 bandwidth_mm: float = 2.0) -> jax.Array:
  """[B, 2] ratings for requests of class `label` [B] at `diameter_mm` [B]: those of a
  training nodule of that class (`nodule_table` rows), drawn with Gaussian weights in
  diameter (the nearest ones where none is close)."""
  logits = class_size_logits(table, label, diameter_mm, bandwidth_mm)
  nearest = jnp.max(logits, -1, keepdims=True)   # no underflow far from every nodule
  return jnp.asarray(table)[jax.random.categorical(rng, logits - nearest), 2:4]


def request_ratings(key, nodules: jax.Array | None, label: jax.Array, diameter_mm: jax.Array,
                    default=None):
  """[B, 2] ratings for requests (class `label` [B], `diameter_mm` [B]) made with the
  in-painting key `key`: drawn from `nodules` (`training_nodules`) with its own key
  (`rng.InpaintKey.RATINGS`), so the hole and noise `inpaint` draws from `key` stay the
  same and independent of it; `default` where `nodules` is None (a GAN not conditioned on
  ratings)."""
  if nodules is None:
    return default
  return draw_ratings(inpaint_key(key, InpaintKey.RATINGS), nodules, label, diameter_mm)


def rating_logits(table: jax.Array, ratings: jax.Array, names: Sequence[str]) -> jax.Array:
  """[B, N] log-weights of how well each training nodule's ratings (`nodule_table` rows
  [N, 4]) match each request's (`ratings` [B, 2]) in the conditioned `names`: a Gaussian of
  width RATING_WIDTH in the channels (`rating_channels`): one texture step costs 2 nats,
  calcified or not 32."""
  table = jnp.asarray(table)
  gap = rating_channels(ratings, names)[:, None, :] - rating_channels(table[:, 2:4], names)[None]
  return -0.5 * jnp.sum((gap / RATING_WIDTH) ** 2, -1)
