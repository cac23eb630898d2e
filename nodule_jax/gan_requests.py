"""What each GAN training sample asks for: its class (a share asks for the other one), its
size, and the size its hole is drawn for; and the training set's constants those requests
and the size-matched losses read (`ClassStats`). Pure functions of the batch and a key,
called inside the jit'd steps (`nodule_jax.train_synthesis`), except the constants, read
once at start."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nodule_jax import input_pipeline, losses
from nodule_jax.inpaint import crop_batch, diameter_pools, working_shape
from nodule_jax.masks import make_hole
from nodule_jax.nodule_ratings import draw_ratings, rating_logits, rating_names, training_nodules


def requested_labels(rng, label: jax.Array, share) -> jax.Array:
  """[B] the class each sample asks for: the true one, or the other one with probability
  `share` (a float, or per true class a pair (benign, malignant))."""
  share = jnp.asarray(share, jnp.float32)
  flip = jax.random.bernoulli(rng, share[label] if share.ndim else share, label.shape)
  return jnp.where(flip, 1 - label, label).astype(label.dtype)


def class_diameters(data_dir, max_diameter_mm: float, k: int = 32) -> np.ndarray:
  """[2, k] (benign, malignant) quantiles of each class's training diameters up to
  `max_diameter_mm`: the sizes a counterfactual request of that class draws from."""
  label, diameter = input_pipeline.labels_and_diameters(input_pipeline.as_list(data_dir))
  keep = diameter <= max_diameter_mm
  pools = diameter_pools(label[keep], diameter[keep],
                         f"training nodule up to {max_diameter_mm:g} mm in {data_dir}: "
                         "counterfactual requests cannot draw its sizes (set "
                         "config.loss.counterfactual_diameter='same')")
  return np.stack([np.quantile(pool, (np.arange(k) + 0.5) / k) for pool in pools]
                  ).astype(np.float32)


def nodule_hole_table(config, data_dir, statistic, batch_size: int = 32) -> np.ndarray:
  """[N, 2 + K]: per training nodule up to `mask.max_diameter_mm`, its label, diameter and
  `statistic(image, hole)` ([B, K]: `losses.hole_moments` or `losses.hole_quantiles`) on
  the working crop, in the hole of its own size (no jitter or shift, so slightly tighter
  than the training holes): a table `losses.size_matched_moments` reads. Every host reads
  the whole split (the table is a constant of the jitted step); a class without any nodule
  is a ValueError."""
  shape, rows = working_shape(config), []
  batches = input_pipeline.eval_batches(data_dir, "train", batch_size, whole=True)
  for batch in batches.as_numpy_iterator():
    batch = crop_batch({k: batch[k] for k in ("image", "mask", "label", "diameter_mm")}, shape)
    keep = batch["diameter_mm"] <= config.mask.max_diameter_mm
    if not keep.any():
      continue
    batch = {k: jnp.asarray(v[keep]) for k, v in batch.items()}
    hole = make_hole(jax.random.PRNGKey(0), batch["diameter_mm"], batch["mask"], shape,
                     tuple(config.model.local_box), margin_mm=config.mask.margin_mm,
                     jitter=0.0, shift_mm=0.0).mask
    rows.append(np.concatenate([np.stack([batch["label"], batch["diameter_mm"]], -1),
                                np.asarray(statistic(batch["image"], hole))], -1))
  table = np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, 2), np.float32)
  diameter_pools(table[:, 0], table[:, 1], f"training nodule up to "
                 f"{config.mask.max_diameter_mm:g} mm in {data_dir} for the size-matched targets")
  return table


class ClassStats(NamedTuple):
  """Training-set constants the losses read: per class, the diameters counterfactual
  requests draw from ([2, K], `class_diameters`; None: their own size), and per nodule its
  label, diameter and hole statistics ([N, 5], `nodule_hole_table` of `hole_moments`;
  None: no L_size), hole quantiles ([N, 2 + Q], of `hole_quantiles`; None: L_hist for
  factual requests only) and per nodule its label, diameter and ratings ([N, 4],
  `nodule_ratings.nodule_table`, the same nodules in the same order; None: a GAN not
  conditioned on them)."""
  diameters: np.ndarray | None = None
  moments: np.ndarray | None = None
  quantiles: np.ndarray | None = None
  nodules: np.ndarray | None = None


class Requests(NamedTuple):
  """What each sample of a batch asks for: class [B], diameter_mm [B], the size its hole is
  drawn for [B] (mm), and ratings [B, 2] (None: a GAN not conditioned on them)."""
  label: jax.Array
  diameter_mm: jax.Array
  hole_diameter_mm: jax.Array
  ratings: jax.Array | None


def requested_diameters(rng, diameter: jax.Array, label: jax.Array, requested: jax.Array,
                        sizes: jax.Array | None, covering: bool = False,
                        own_share: float = 0.0) -> jax.Array:
  """[B] the size each sample asks for: its own, or for a counterfactual request, with
  `sizes` [2, K] (`class_diameters`), one drawn from the requested class's sizes; with
  `covering`, at least its own nodule's (so the requested size, not that nodule, sizes
  its hole). A share `own_share` of the counterfactual requests keep their own nodule's
  size: "malignant" at a small benign nodule's size, as the label swap asks."""
  if sizes is None:
    return diameter
  drawn = jnp.asarray(sizes)[requested, jax.random.randint(rng, label.shape, 0, sizes.shape[1])]
  if covering:
    drawn = jnp.maximum(drawn, diameter)
  if own_share:
    own = jax.random.bernoulli(jax.random.fold_in(rng, 1), own_share, label.shape)
    drawn = jnp.where(own, diameter, drawn)
  return jnp.where(requested == label, diameter, drawn)


def oversized_hole_diameters(rng, diameter: jax.Array, factual: jax.Array, share: float
                             ) -> jax.Array:
  """[B] the size each sample's hole is drawn for: its request's, or for a share `share` of
  the samples asked for their own class (`factual` [B] bool), the larger of its own and
  another sample's of the batch. The size channel still says its own: the generator learns
  to paint a small nodule, and the lung around it, in the hole a larger one left (what the
  evaluation asks of a small request on a background with a large nodule)."""
  if not share:
    return diameter
  k_pick, k_partner = jax.random.split(rng)
  pick = jax.random.bernoulli(k_pick, share, diameter.shape) & factual
  partner = diameter[jax.random.permutation(k_partner, diameter.shape[0])]
  return jnp.where(pick, jnp.maximum(diameter, partner), diameter)


def class_stats(config, counterfactual: bool) -> ClassStats:
  """The constants `config`'s losses read, each only where a loss reads it (None elsewhere):
  the counterfactual requests' sizes, the nodules' hole moments (L_size) and hole quantiles
  (L_hist's counterfactual part). counterfactual: whether any sample asks for the other
  class (`train_synthesis.check_counterfactual`)."""
  data_dir = config.data.data_dir
  stats = ClassStats(
      class_diameters(data_dir, config.mask.max_diameter_mm)
      if counterfactual and config.loss.counterfactual_diameter != "same" else None,
      nodule_hole_table(config, data_dir, losses.hole_moments)
      if config.loss.lambda_hole_sized else None,
      nodule_hole_table(config, data_dir, losses.hole_quantiles)
      if counterfactual and config.loss.lambda_hole_histogram
      and config.loss.histogram_counterfactual else None,
      training_nodules(config))
  for table in (stats.moments, stats.quantiles):
    if stats.nodules is not None and table is not None and (
        table.shape[0] != stats.nodules.shape[0]
        or not np.allclose(table[:, :2], stats.nodules[:, :2])):
      raise RuntimeError(f"the training nodules of {data_dir} were read in two orders: "
                         "their ratings cannot be matched to their hole statistics")
  return stats


def rating_match(stats: ClassStats | None, ratings: jax.Array | None, config
                 ) -> jax.Array | None:
  """[B, N] log-weights favouring the training nodules rated as each request
  (`nodule_ratings.rating_logits`) for the size-matched targets; None without ratings."""
  if ratings is None or stats is None or stats.nodules is None:
    return None
  return rating_logits(jnp.asarray(stats.nodules), ratings, rating_names(config))


def draw_requests(rng, batch, config, stats: ClassStats | None) -> Requests:
  """What each sample asks for: its class (`requested_labels`) and size
  (`requested_diameters`), the size its hole is drawn for (`oversized_hole_diameters`),
  and, for a GAN conditioned on ratings, its own nodule's ratings, or for a counterfactual
  request those of a training nodule of the requested class and size
  (`nodule_ratings.draw_ratings`)."""
  label = batch["label"]
  requested = requested_labels(rng, label, config.loss.counterfactual)
  sizes = stats.diameters if stats is not None else None
  diameter = requested_diameters(jax.random.fold_in(rng, 1), batch["diameter_mm"], label,
                                 requested, sizes,
                                 config.loss.counterfactual_diameter == "covering",
                                 config.loss.counterfactual_own_size)
  ratings = None
  if rating_names(config):
    ratings = batch["ratings"]
    if stats is not None and stats.nodules is not None:
      drawn = draw_ratings(jax.random.fold_in(rng, 3), jnp.asarray(stats.nodules), requested,
                           diameter)
      ratings = jnp.where((requested == label)[:, None], ratings, drawn)
  return Requests(requested, diameter, oversized_hole_diameters(
      jax.random.fold_in(rng, 2), diameter, requested == label, config.mask.oversized), ratings)
