"""3D building blocks that are fast under XLA on CPU (DESIGN §5), channels-last [B, D, H, W, C].

XLA CPU runs the input gradient of strided convolutions and any transposed convolution
20–100× slower than oneDNN. So resolution changes are done by rearranging voxels:
`space_to_depth` (2×2×2 blocks into channels) + a stride-1 conv to go down,
a stride-1 conv to 8× channels + `depth_to_space` ("sub-pixel") to go up.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


def space_to_depth(x: jax.Array, r: int = 2) -> jax.Array:
  """[B, D, H, W, C] -> [B, D/r, H/r, W/r, r³·C]."""
  b, d, h, w, c = x.shape
  x = x.reshape(b, d // r, r, h // r, r, w // r, r, c)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
  return x.reshape(b, d // r, h // r, w // r, r ** 3 * c)


def depth_to_space(x: jax.Array, r: int = 2) -> jax.Array:
  """[B, D, H, W, r³·C] -> [B, r·D, r·H, r·W, C]; the inverse of `space_to_depth`."""
  b, d, h, w, c = x.shape
  c_out = c // r ** 3
  x = x.reshape(b, d, h, w, r, r, r, c_out)
  x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)
  return x.reshape(b, d * r, h * r, w * r, c_out)


class Conv(nn.Module):
  """3×3×3 (by default) stride-1 conv + optional activation."""
  features: int
  kernel: int = 3
  dilation: int = 1
  act: Callable | None = nn.elu
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, (self.kernel,) * 3, padding="SAME",
                kernel_dilation=(self.dilation,) * 3, dtype=self.dtype)(x)
    return self.act(x) if self.act is not None else x


class Down(nn.Module):
  """Halves D, H, W: space_to_depth then a stride-1 conv. [B,D,H,W,C] -> [B,D/2,H/2,W/2,F]."""
  features: int
  act: Callable | None = nn.elu
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return Conv(self.features, act=self.act, dtype=self.dtype)(space_to_depth(x))


class Up(nn.Module):
  """Doubles D, H, W: a stride-1 conv to 8·F channels then depth_to_space."""
  features: int
  act: Callable | None = nn.elu
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = depth_to_space(Conv(8 * self.features, act=None, dtype=self.dtype)(x))
    return self.act(x) if self.act is not None else x
