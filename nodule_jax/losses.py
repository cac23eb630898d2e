"""Losses of the class-aware in-painting GAN (paper eqs. 1–5)."""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nodule_jax.intensity import HU_MAX, HU_MIN, hu_to_unit

FAKE = 0  # aux classes: 0 fake, 1 benign, 2 malignant (= label + 1)


def recon_l1(pred: jax.Array, target: jax.Array, mask: jax.Array, lambda_global: float,
             hole_weight: jax.Array | None = None) -> jax.Array:
  """L_masked + λ1·L_global: L1 over the hole divided by its area, plus the mean L1.

  pred, target, mask: [B, D, H, W, 1]; hole_weight: [B] 1 where the hole has a target,
  0 where it has none (a sample asked for the other class: only the L1 outside its hole
  counts); None: all 1. Per sample, then averaged over the batch.
  """
  err = jnp.abs(pred - target)
  axes = tuple(range(1, err.ndim))
  weight = jnp.ones(err.shape[:1]) if hole_weight is None else hole_weight
  masked = jnp.sum(err * mask, axes) / jnp.maximum(jnp.sum(mask, axes), 1.0)
  counted = 1.0 - mask * (1.0 - weight.reshape((-1,) + (1,) * (err.ndim - 1)))
  return jnp.mean(weight * masked + lambda_global * jnp.mean(err * counted, axes))


def wgan_critic(d_real: jax.Array, d_fake: jax.Array) -> jax.Array:
  """-L_adv without the penalty: E[D(fake)] - E[D(real)], minimised by the critic."""
  return jnp.mean(d_fake) - jnp.mean(d_real)


def gradient_penalty(critic: Callable[[jax.Array], jax.Array], real: jax.Array,
                     fake: jax.Array, rng: jax.Array) -> jax.Array:
  """E[(‖∇D(x̂)‖₂ - 1)²], x̂ = ε·real + (1-ε)·fake with ε ~ U[0, 1] per sample.

  critic: [B, ...] -> [B]; the norm is over all non-batch axes of the input.
  """
  eps = jax.random.uniform(rng, (real.shape[0],) + (1,) * (real.ndim - 1))
  x_hat = eps * real + (1 - eps) * fake
  grads = jax.grad(lambda x: jnp.sum(critic(x)))(x_hat)
  norms = jnp.sqrt(jnp.sum(grads ** 2, axis=tuple(range(1, grads.ndim))) + 1e-12)
  return jnp.mean((norms - 1.0) ** 2)


def aux_ce(logits: jax.Array, classes: jax.Array) -> jax.Array:
  """L_cls: mean cross-entropy of the 3-way head against classes in {0 fake, 1, 2}."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, classes))


def real_classes(label: jax.Array) -> jax.Array:
  """Benign (0) / malignant (1) labels -> aux classes 1 / 2."""
  return label.astype(jnp.int32) + 1


HOLE_THRESHOLDS_HU = (-400.0, -100.0)  # the nodule's body and its dense core


def hole_moments(x: jax.Array, hole: jax.Array, softness_hu: float = 25.0) -> jax.Array:
  """[B, 3] per sample, inside the hole: the mean value ([-1, 1] scale) and the soft shares
  of voxels above each of HOLE_THRESHOLDS_HU (a sigmoid `softness_hu` wide, differentiable).

  x, hole: [B, D, H, W, 1].
  """
  width = softness_hu * 2.0 / (HU_MAX - HU_MIN)  # in [-1, 1] units
  axes = tuple(range(1, x.ndim))
  area = jnp.maximum(jnp.sum(hole, axes), 1.0)
  stats = [jnp.sum(x * hole, axes) / area]
  for t in HOLE_THRESHOLDS_HU:
    above = jax.nn.sigmoid((x - float(hu_to_unit(np.float32(t)))) / width)
    stats.append(jnp.sum(above * hole, axes) / area)
  return jnp.stack(stats, -1)


def requested_fraction(hole: jax.Array, requested_voxels: jax.Array,
                       oversized: jax.Array) -> jax.Array:
  """[B] the share of each hole the requested size's own hole fills: requested_voxels [B]
  over the hole's voxels where `oversized` [B] (a request smaller than its background's
  nodule, whose hole holds both), 1 elsewhere. hole: [B, D, H, W, 1]."""
  area = jnp.sum(hole, tuple(range(1, hole.ndim)))
  return jnp.where(oversized, jnp.minimum(requested_voxels / jnp.maximum(area, 1.0), 1.0), 1.0)


def in_requested_terms(target: jax.Array, fraction: jax.Array) -> tuple[jax.Array, jax.Array]:
  """A request's `hole_moments` target [B, K] (the mean, then shares) in its hole's terms.

  A small nodule painted into a larger hole (`requested_fraction` [B] < 1) has as many dense
  voxels as one in its own hole, spread over more voxels: its target shares shrink by the
  fraction, and its mean, which the surrounding lung sets, is left out.
  Returns (target [B, K], weight [B, K]: 1 where a statistic counts).
  """
  is_mean = jnp.arange(target.shape[-1]) == 0
  scale = jnp.where(is_mean, 1.0, fraction[:, None])
  weight = jnp.ones_like(target).at[:, 0].set((fraction >= 1.0).astype(target.dtype))
  return target * scale, weight


def class_moment_matching(fake: jax.Array, fake_label: jax.Array, real: jax.Array,
                          real_label: jax.Array, fraction: jax.Array | None = None
                          ) -> jax.Array:
  """Σ over classes present among both fakes and reals of ‖mean (fake − target)‖², the
  target being the mean real statistics of the fake's requested class, in its hole's terms
  (`in_requested_terms`).

  fake, real: [B, K] per-sample statistics (`hole_moments`); fake_label: the class each
  fake was asked for, real_label: the real samples' classes, [B] in {0, 1}; fraction: [B]
  (`requested_fraction`; None: all 1). The real side is data (no gradient). Matches the
  class's average, not each sample, so sizes may differ.
  """
  real = jax.lax.stop_gradient(real)
  fraction = jnp.ones(fake.shape[:1], fake.dtype) if fraction is None else fraction
  total = 0.0
  for c in (0, 1):
    wr = (real_label == c).astype(real.dtype)[:, None]
    nr = jnp.sum(wr)
    real_mean = jnp.sum(wr * real, 0) / jnp.maximum(nr, 1.0)
    target, weight = in_requested_terms(jnp.broadcast_to(real_mean, fake.shape), fraction)
    wf = (fake_label == c).astype(fake.dtype)[:, None] * weight
    nf = jnp.sum(wf, 0)
    gap = jnp.sum(wf * (fake - target), 0) / jnp.maximum(nf, 1.0)
    total = total + jnp.where(nr > 0, jnp.sum(jnp.where(nf > 0, gap ** 2, 0.0)), 0.0)
  return total


def size_matched_moments(table: jax.Array, requested: jax.Array, diameter: jax.Array,
                         bandwidth_mm: float = 2.0, other_class: float = 0.0,
                         extra_logits: jax.Array | None = None) -> jax.Array:
  """[B, K] per sample, the training nodules' hole statistics expected for its request: the
  mean over the requested class's nodules, Gaussian-weighted by how close their diameter is
  to the requested one (falls back to the nearest ones when none is close). With
  `other_class` α > 0 each nodule of the other class counts α times as much: at a size
  where the requested class has many nodules they set most of the target, where it has
  few the other class's do, and where it has none within a few bandwidths the target is
  the other class's (α bounds a nodule's weight, not the other class's share).
  `extra_logits` [B, N] adds log-weights (`nodule_ratings.rating_logits`: nodules rated as
  the request count more).

  table: [N, 2 + K] rows of (label, diameter_mm, K statistics); requested, diameter: [B].
  """
  same = table[None, :, 0] == requested[:, None].astype(table.dtype)        # [B, N]
  closeness = -0.5 * ((table[None, :, 1] - diameter[:, None]) / bandwidth_mm) ** 2
  other = jnp.log(other_class) if other_class > 0 else -jnp.inf
  logits = closeness + jnp.where(same, 0.0, other)
  weight = jax.nn.softmax(logits if extra_logits is None else logits + extra_logits, axis=-1)
  return weight @ table[:, 2:]


def sample_moment_matching(fake: jax.Array, target: jax.Array, weight: jax.Array) -> jax.Array:
  """Σ_ik w_ik (fake_ik − target_ik)² / Σ_i max_k w_ik (0 where every weight is 0).

  fake, target: [B, K] statistics; weight: [B] per sample or [B, K] per statistic. The
  target is data (no gradient).
  """
  weight = weight.reshape(weight.shape[0], -1)
  gap = (fake - jax.lax.stop_gradient(target)) ** 2
  return jnp.sum(weight * gap) / jnp.maximum(jnp.sum(jnp.max(weight, -1)), 1e-6)


class HoleValues(NamedTuple):
  """Each sample's values inside its hole, sorted: `values` [B, V] ascending, then padding
  that sorts after every value; `count` [B] the hole's voxels (at least 1)."""
  values: jax.Array
  count: jax.Array


def sorted_in_hole(x: jax.Array, hole: jax.Array) -> HoleValues:
  """x, hole: [B, D, H, W, 1] -> `HoleValues` (one sort, shared by the distances below)."""
  outside = 1e30   # sorts after every value; equal on both sides of a distance, so it cancels
  flat = jnp.where(hole > 0, x, outside).reshape(x.shape[0], -1)
  return HoleValues(jnp.sort(flat, -1),
                    jnp.maximum(jnp.sum(hole.reshape(hole.shape[0], -1), -1), 1.0))


CORE_LEVEL = 0.8   # a hole's top fifth: where real nodules' dense voxels are (13-21% > -400 HU)


def hole_levels(fake: HoleValues) -> jax.Array:
  """[B, V]: the level (i + 1/2) / n of each sorted value in its hole of n voxels (above 1
  in the padding)."""
  rank = jnp.arange(fake.values.shape[1], dtype=jnp.float32)
  return (rank[None] + 0.5) / fake.count[:, None]


def weighted_w1(gap: jax.Array, fake: HoleValues, weight: jax.Array, core_weight: float
                ) -> jax.Array:
  """The weighted mean over samples [B] of each hole's mean gap [B, V] (0 in the padding),
  the values at levels >= CORE_LEVEL (the hole's densest fifth) counting 1 + `core_weight`
  times. A W1 distance's gradient is the same for every voxel whatever its gap, so the few
  dense voxels of a nodule's core weigh as little as any voxel of the lung around it; a
  core weight weighs them more (0: every voxel alike, the plain W1)."""
  if core_weight:
    gap = gap * (1.0 + core_weight * (hole_levels(fake) >= CORE_LEVEL))
  return jnp.sum(weight * jnp.sum(gap, -1) / fake.count) / jnp.maximum(jnp.sum(weight), 1.0)


def hole_histogram_distance(fake: HoleValues, real: HoleValues, weight: jax.Array,
                            core_weight: float = 0.0) -> jax.Array:
  """The weighted mean over samples of the 1D Wasserstein-1 distance between the values of
  a fake and of its real patch inside the same hole ([-1, 1] units): both sorted and
  compared in order, the densest fifth counting 1 + `core_weight` times (`weighted_w1`).
  Unlike a voxel-wise L1, it does not care where a value sits, only that the hole holds
  as many voxels at each intensity as the real one; every hole voxel gets a gradient.

  fake, real: `sorted_in_hole` of the same holes; weight: [B]. The real side is data (no
  gradient).
  """
  return weighted_w1(jnp.abs(fake.values - jax.lax.stop_gradient(real.values)), fake, weight,
                     core_weight)


QUANTILE_LEVELS = 32   # a target distribution's quantiles at (k + 1/2) / QUANTILE_LEVELS


def hole_quantiles(x: np.ndarray, hole: np.ndarray, levels: int = QUANTILE_LEVELS) -> np.ndarray:
  """[B, levels]: each hole's values at the quantile levels (k + 1/2) / levels.

  x, hole: [B, D, H, W, 1] (numpy; every hole non-empty)."""
  q = (np.arange(levels) + 0.5) / levels
  return np.stack([np.quantile(xi[hi > 0], q) for xi, hi in zip(np.asarray(x), np.asarray(hole))])


def hole_quantile_distance(fake: HoleValues, quantiles: jax.Array, weight: jax.Array,
                           core_weight: float = 0.0) -> jax.Array:
  """The weighted mean over samples of the 1D Wasserstein-1 distance between the values of
  a fake inside its hole and a target distribution given by its quantiles: the i-th of the
  hole's n sorted values against the target's quantile function at (i + 1/2) / n
  (interpolated between the levels of `hole_quantiles`), the densest fifth counting
  1 + `core_weight` times (`weighted_w1`).

  fake: `sorted_in_hole`; quantiles: [B, Q] ([-1, 1] units, data: no gradient); weight: [B].
  """
  at = hole_levels(fake)
  levels = (jnp.arange(quantiles.shape[1], dtype=jnp.float32) + 0.5) / quantiles.shape[1]
  target = jax.vmap(lambda a, q: jnp.interp(a, levels, q))(at, jax.lax.stop_gradient(quantiles))
  return weighted_w1(jnp.where(at < 1.0, jnp.abs(fake.values - target), 0.0), fake, weight,
                     core_weight)


def roughness(x: jax.Array, hole: jax.Array) -> jax.Array:
  """[B]: per sample, the mean over its hole's voxels of (x - x blurred by [1, 2, 1] / 4
  along D, H and W)^2, the energy of the finest scale: a smooth nodule has little, a voxel
  checkerboard a quarter of its squared amplitude (its blur is its mean).

  x, hole: [B, D, H, W, 1] (edges padded by repetition).
  """
  smooth = x
  for axis in (1, 2, 3):
    n = x.shape[axis]
    padded = jnp.pad(smooth, [(1, 1) if a == axis else (0, 0) for a in range(x.ndim)],
                     mode="edge")
    smooth = sum(w * jax.lax.slice_in_dim(padded, k, k + n, axis=axis)
                 for k, w in enumerate((0.25, 0.5, 0.25)))
  axes = tuple(range(1, x.ndim))
  return jnp.sum(hole * (x - smooth) ** 2, axes) / jnp.maximum(jnp.sum(hole, axes), 1.0)


def roughness_excess(fake: jax.Array, real: jax.Array) -> jax.Array:
  """The mean over fakes of how much rougher each hole is than the batch's real nodules
  on average (0 where it is not): penalises stripes without asking for a blur.

  fake, real: [B] `roughness` of the fakes' holes and of the real nodules' own holes (the
  real side is data: no gradient)."""
  return jnp.mean(jax.nn.relu(fake - jax.lax.stop_gradient(jnp.mean(real))))


MODE_SEEKING_EPS = 1e-5   # MSGAN's (Mao et al. 2019) guard against identical outputs


def mode_seeking(fake_a: jax.Array, fake_b: jax.Array, noise_a: jax.Array, noise_b: jax.Array,
                 hole: jax.Array) -> jax.Array:
  """MSGAN's L_ms: 1 / (d_image / d_noise + eps), minimised so that two in-paintings of one
  request with different noise differ (d: mean absolute difference over every hole voxel
  of the batch; the noise is the generator's input in the hole).

  fake_a, fake_b, noise_a, noise_b, hole: [B, D, H, W, 1]; the holes are the same.
  """
  voxels = jnp.maximum(jnp.sum(hole), 1.0)
  d_image = jnp.sum(jnp.abs(fake_a - fake_b) * hole) / voxels
  d_noise = jnp.sum(jnp.abs(noise_a - noise_b) * hole) / voxels
  return 1.0 / (d_image / jnp.maximum(d_noise, MODE_SEEKING_EPS) + MODE_SEEKING_EPS)
