"""WGAN-GP critics with a 3-way auxiliary head (0 fake, 1 benign, 2 malignant). No BatchNorm.

The class reaches the WGAN head by projection (Miyato & Koyama 2018), never as an input
channel: the aux head must tell benign from malignant by the image alone (a label channel
would let it read the answer and teach the generator nothing about what a class looks like).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from nodule_jax.models.layers import Conv, space_to_depth


class Critic(nn.Module):
  """(x [B, D, H, W, C], label [B] 0 benign / 1 malignant) -> (wgan [B], aux logits [B, 3]).

  wgan = ψ(φ(x)) + embed(label)·mean(φ(x)) (the class projected on the spatially pooled
  features), aux = A(φ(x)).

  Each stage halves D, H, W (space-to-depth + stride-1 conv), then LayerNorm over
  (D, H, W, C) per sample (the gradient penalty needs per-sample independence).
  space-to-depth + a k=2 conv sees the same 4×4×4 window as the usual k=4, stride-2 conv.
  """
  widths: Sequence[int] = (32, 64, 128, 128)
  kernel: int = 2
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, label: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = x.astype(self.dtype)
    for i, w in enumerate(self.widths):
      h = Conv(w, self.kernel, dtype=self.dtype)(space_to_depth(h))
      if i > 0:
        h = nn.LayerNorm(reduction_axes=(1, 2, 3, 4), dtype=self.dtype)(h)
      h = nn.leaky_relu(h, 0.2)
    h = h.astype(jnp.float32)
    pooled = jnp.mean(h, axis=(1, 2, 3))        # [B, C]: the projection sees no position
    projection = jnp.sum(nn.Embed(2, h.shape[-1], name="class_embedding")(label) * pooled, -1)
    h = h.reshape(h.shape[0], -1)
    wgan = nn.Dense(1, dtype=jnp.float32)(h)[:, 0] + projection
    aux = nn.Dense(3, dtype=jnp.float32)(h)
    return wgan.astype(jnp.float32), aux.astype(jnp.float32)
