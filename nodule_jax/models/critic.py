"""WGAN-GP critics with a 3-way auxiliary head (0 fake, 1 benign, 2 malignant). No BatchNorm."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from nodule_jax.models.layers import Conv, space_to_depth


class Critic(nn.Module):
  """[B, D, H, W, C] -> (wgan [B], aux logits [B, 3]).

  Each stage halves D, H, W (space-to-depth + stride-1 conv), then LayerNorm over
  (D, H, W, C) per sample (the gradient penalty needs per-sample independence).
  space-to-depth + a k=2 conv sees the same 4×4×4 window as the usual k=4, stride-2 conv.
  """
  widths: Sequence[int] = (32, 64, 128, 128)
  kernel: int = 2
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = x.astype(self.dtype)
    for i, w in enumerate(self.widths):
      h = Conv(w, self.kernel, dtype=self.dtype)(space_to_depth(h))
      if i > 0:
        h = nn.LayerNorm(reduction_axes=(1, 2, 3, 4), dtype=self.dtype)(h)
      h = nn.leaky_relu(h, 0.2)
    h = h.reshape(h.shape[0], -1)
    wgan = nn.Dense(1, dtype=jnp.float32)(h)[:, 0]
    aux = nn.Dense(3, dtype=jnp.float32)(h)
    return wgan.astype(jnp.float32), aux.astype(jnp.float32)
