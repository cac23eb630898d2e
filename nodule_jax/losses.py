"""Losses of the class-aware in-painting GAN (paper eqs. 1–5)."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

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
