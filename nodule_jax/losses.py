"""Losses of the class-aware in-painting GAN (paper eqs. 1–5)."""
from __future__ import annotations

from typing import Callable

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


def class_moment_matching(fake: jax.Array, fake_label: jax.Array, real: jax.Array,
                          real_label: jax.Array) -> jax.Array:
  """Σ over classes present among both fakes and reals of ‖mean fake − mean real‖².

  fake, real: [B, K] per-sample statistics (`hole_moments`); fake_label: the class each
  fake was asked for, real_label: the real samples' classes, [B] in {0, 1}. The real side is
  data (no gradient). Matches the class's average, not each sample, so sizes may differ.
  """
  real = jax.lax.stop_gradient(real)
  total = 0.0
  for c in (0, 1):
    wf = (fake_label == c).astype(fake.dtype)[:, None]
    wr = (real_label == c).astype(real.dtype)[:, None]
    nf, nr = jnp.sum(wf), jnp.sum(wr)
    gap = jnp.sum(wf * fake, 0) / jnp.maximum(nf, 1.0) - jnp.sum(wr * real, 0) / jnp.maximum(nr, 1.0)
    total = total + jnp.where((nf > 0) & (nr > 0), jnp.sum(gap ** 2), 0.0)
  return total


def size_matched_moments(table: jax.Array, requested: jax.Array, diameter: jax.Array,
                         bandwidth_mm: float = 2.0) -> jax.Array:
  """[B, K] per sample, the training nodules' hole statistics expected for its request: the
  mean over the requested class's nodules, Gaussian-weighted by how close their diameter is
  to the requested one (falls back to the nearest ones when none is close).

  table: [N, 2 + K] rows of (label, diameter_mm, K statistics); requested, diameter: [B].
  """
  same = table[None, :, 0] == requested[:, None].astype(table.dtype)        # [B, N]
  closeness = -0.5 * ((table[None, :, 1] - diameter[:, None]) / bandwidth_mm) ** 2
  weight = jax.nn.softmax(jnp.where(same, closeness, -jnp.inf), axis=-1)
  return weight @ table[:, 2:]


def sample_moment_matching(fake: jax.Array, target: jax.Array, weight: jax.Array) -> jax.Array:
  """Σ_i w_i‖fake_i − target_i‖² / Σ_i w_i (0 where every weight is 0).

  fake, target: [B, K] statistics; weight: [B]. The target is data (no gradient).
  """
  gap = jnp.sum((fake - jax.lax.stop_gradient(target)) ** 2, -1)
  return jnp.sum(weight * gap) / jnp.maximum(jnp.sum(weight), 1e-6)


def hole_histogram_distance(fake: jax.Array, real: jax.Array, hole: jax.Array,
                            weight: jax.Array) -> jax.Array:
  """The weighted mean over samples of the 1D Wasserstein-1 distance between the values of
  `fake` and of `real` inside the same hole ([-1, 1] units): both hole's values sorted and
  compared in order. Unlike a voxel-wise L1, it does not care where a value sits, only
  that the hole holds as many voxels at each intensity as the real one; every hole voxel
  gets a gradient.

  fake, real, hole: [B, D, H, W, 1]; weight: [B]. The real side is data (no gradient).
  """
  outside = 1e30   # sorts after every value; equal on both sides, so it cancels
  flat = lambda x: jnp.where(hole > 0, x, outside).reshape(x.shape[0], -1)
  gap = jnp.abs(jnp.sort(flat(fake), -1) - jnp.sort(flat(jax.lax.stop_gradient(real)), -1))
  area = jnp.maximum(jnp.sum(hole.reshape(hole.shape[0], -1), -1), 1.0)
  return jnp.sum(weight * jnp.sum(gap, -1) / area) / jnp.maximum(jnp.sum(weight), 1.0)
