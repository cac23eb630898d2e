"""The stacked coarse-to-fine in-painting generator: G1 (coarse) -> G2 (refine + attention)."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from nodule_jax.masks import pool_mask
from nodule_jax.models.attention import contextual_attention
from nodule_jax.models.layers import Conv, Down, Up


@jax.custom_vjp
def clip_recoverable(x: jax.Array) -> jax.Array:
  """x clipped to [-1, 1], whose gradient, past a bound, still passes when it points back
  inside: with a plain clip a voxel past -1 gets no gradient at all, and a generator whose
  hole has gone past -1 stays there (every hole air, whatever the losses say)."""
  return jnp.clip(x, -1.0, 1.0)


def _clip_forward(x):
  return jnp.clip(x, -1.0, 1.0), x


def _clip_backward(x, g):   # gradient descent moves x by -g: inward below -1 when g < 0
  inward = ((x >= -1.0) & (x <= 1.0)) | ((x < -1.0) & (g < 0)) | ((x > 1.0) & (g > 0))
  return (jnp.where(inward, g, 0.0),)


clip_recoverable.defvjp(_clip_forward, _clip_backward)


class HourGlass(nn.Module):
  """3D encoder–decoder. [B, D, H, W, Cin] -> [B, D, H, W, 1] in [-1, 1].

  `depth` halvings (space-to-depth + conv), dilated convs at the bottleneck, up-sampling
  back (`upsample`: sub-pixel or transposed convs, see `layers.Up`). With `attention`, a contextual-attention branch runs beside the dilated
  branch at the bottleneck (G2).
  """
  width: int = 32
  depth: int = 2
  dilations: Sequence[int] = (1, 2, 4, 8)
  attention: bool = False
  dtype: jnp.dtype = jnp.float32
  upsample: str = "subpixel"

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    conv = lambda f, **kw: Conv(f, act=nn.elu, dtype=self.dtype, **kw)
    h = x.astype(self.dtype)
    for i in range(self.depth):
      h = Down(self.width * 2 ** i, dtype=self.dtype)(h)
      h = conv(self.width * 2 ** i)(h)
    c = self.width * 2 ** (self.depth - 1)
    branch = h
    for d in self.dilations:
      branch = conv(c, dilation=d)(branch)
    if self.attention:
      a = conv(c)(h)
      a = contextual_attention(a, a, pool_mask(mask, 2 ** self.depth).astype(a.dtype))
      a = conv(c)(conv(c)(a))
      branch = conv(c)(jnp.concatenate([branch, a], -1))
    h = branch
    for i in reversed(range(1, self.depth)):
      h = Up(self.width * 2 ** (i - 1), dtype=self.dtype, mode=self.upsample)(h)
      h = conv(self.width * 2 ** (i - 1))(h)
    h = Up(1, act=None, dtype=self.dtype, mode=self.upsample)(h)
    return clip_recoverable(h.astype(jnp.float32))


class Generator(nn.Module):
  """G1 then G2 on G1's output composited into the background.

  inputs: [B, D, H, W, C] (masked patch, mask, label map[, diameter map]);
  mask: [B, D, H, W, 1]; masked: [B, D, H, W, 1]. Returns (x1, x2), each [B, D, H, W, 1].
  """
  width: int = 32
  depth: int = 2
  dilations: Sequence[int] = (1, 2, 4, 8)
  attention: bool = True
  dtype: jnp.dtype = jnp.float32
  upsample: str = "subpixel"

  @nn.compact
  def __call__(self, inputs, mask, masked):
    kw = dict(width=self.width, depth=self.depth, dilations=self.dilations, dtype=self.dtype,
              upsample=self.upsample)
    x1 = HourGlass(**kw, name="g1")(inputs)
    x1_composite = x1 * mask + masked * (1 - mask)
    x2 = HourGlass(**kw, attention=self.attention, name="g2")(
        jnp.concatenate([x1_composite, inputs[..., 1:]], -1), mask)
    return x1, x2
