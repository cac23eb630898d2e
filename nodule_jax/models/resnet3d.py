"""Hara et al.'s 3D ResNets and ResNeXt (CVPR 2018 code line), Flax Linen, [B, D, H, W, C].

conv1 7×7×7 stride (1, 2, 2) pad 3 -> BN -> ReLU -> max-pool 3 / 2 -> four stages
(strides 1, 2, 2, 2) -> global average pool -> fc. Parameter names follow the PyTorch code
(conv1, bn1, layer2_0/conv2, layer2_0/downsample_conv, fc, ...) so ported Kinetics weights
map one to one; strided convs run through `layers.conv3d` (space-to-depth, fast on CPU).
"""
from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from nodule_jax.models import pooling
from nodule_jax.models.layers import Conv

ARCHS = {
    "resnet-18": dict(block="basic", layers=(2, 2, 2, 2), shortcut="A"),
    "resnet-34": dict(block="basic", layers=(3, 4, 6, 3), shortcut="A"),
    "resnet-50": dict(block="bottleneck", layers=(3, 4, 6, 3), shortcut="B"),
    "resnet-101": dict(block="bottleneck", layers=(3, 4, 23, 3), shortcut="B"),
    "resnet-152": dict(block="bottleneck", layers=(3, 8, 36, 3), shortcut="B"),
    "resnext-101": dict(block="resnext", layers=(3, 4, 23, 3), shortcut="B",
                        widths=(128, 256, 512, 1024)),
    "small": dict(block="bottleneck", layers=(1, 1, 1, 1), shortcut="B",
                  widths=(8, 16, 32, 64), stem=16),
    "tiny": dict(block="basic", layers=(1, 1, 1, 1), shortcut="B", widths=(8, 16, 16, 32),
                 stem=8),
}
EXPANSION = {"basic": 1, "bottleneck": 4, "resnext": 2}


def _conv(features, kernel_size, strides, padding, groups=1, *, dtype, name):
  """PyTorch's Conv3d without bias (He init, fan-out), on `layers.Conv`."""
  return Conv(features, kernel_size, strides, padding, groups=groups, use_bias=False,
              dtype=dtype, name=name,
              kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"))


def _norm(train: bool, name: str, dtype):
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      dtype=dtype, name=name)


class Block(nn.Module):
  """basic (3×3×3, 3×3×3), bottleneck (1, 3, 1; ×4) or resnext (1, grouped 3, 1; ×2)."""
  kind: str
  planes: int
  stride: int = 1
  downsample: bool = False
  shortcut: str = "B"
  cardinality: int = 32
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    s = (self.stride,) * 3
    conv = functools.partial(_conv, dtype=self.dtype)
    norm = functools.partial(_norm, train, dtype=self.dtype)
    out_planes = self.planes * EXPANSION[self.kind]
    if self.kind == "basic":
      y = nn.relu(norm("bn1")(conv(self.planes, 3, s, 1, name="conv1")(x)))
      y = norm("bn2")(conv(self.planes, 3, (1, 1, 1), 1, name="conv2")(y))
    else:
      mid, groups = self.planes, 1
      if self.kind == "resnext":
        mid, groups = self.cardinality * (self.planes // 32), self.cardinality
      y = nn.relu(norm("bn1")(conv(mid, 1, (1, 1, 1), 0, name="conv1")(x)))
      y = nn.relu(norm("bn2")(conv(mid, 3, s, 1, groups, name="conv2")(y)))
      y = norm("bn3")(conv(out_planes, 1, (1, 1, 1), 0, name="conv3")(y))
    residual = x
    if self.downsample:
      if self.shortcut == "A":  # subsample + zero channels (no parameters)
        residual = x[:, ::self.stride, ::self.stride, ::self.stride]
        residual = jnp.pad(residual, [(0, 0)] * 4 + [(0, out_planes - x.shape[-1])])
      else:
        residual = norm("downsample_bn")(conv(out_planes, 1, s, 0, name="downsample_conv")(x))
    return nn.relu(y + residual)


class ResNet3D(nn.Module):
  """x: [B, D, H, W, C] -> logits [B, num_classes]. The pooled features [B, F] before fc are
  sown as ('intermediates', 'features'): `apply(..., mutable=['intermediates'])` returns them."""
  block: str = "bottleneck"
  layers: Sequence[int] = (3, 4, 6, 3)
  shortcut: str = "B"
  widths: Sequence[int] = (64, 128, 256, 512)
  stem: int = 64
  cardinality: int = 32
  num_classes: int = 2
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = _conv(self.stem, 7, (1, 2, 2), 3, dtype=self.dtype, name="conv1")(x)
    x = nn.relu(_norm(train, "bn1", self.dtype)(x))
    x = pooling.max_pool3d(x, 3, 2, 1)
    inplanes = self.stem
    for i, (planes, n) in enumerate(zip(self.widths, self.layers)):
      for j in range(n):
        stride = 2 if i > 0 and j == 0 else 1
        out = planes * EXPANSION[self.block]
        x = Block(self.block, planes, stride, stride != 1 or inplanes != out, self.shortcut,
                  self.cardinality, self.dtype, name=f"layer{i + 1}_{j}")(x, train)
        inplanes = out
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3))
    self.sow("intermediates", "features", x)
    return nn.Dense(self.num_classes, name="fc")(x)


def create(arch: str, num_classes: int = 2, dtype=jnp.float32, **overrides) -> ResNet3D:
  """A model from `ARCHS` ('resnet-50', 'resnext-101', 'tiny', ...)."""
  if arch not in ARCHS:
    raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHS)}")
  return ResNet3D(**{**ARCHS[arch], **overrides}, num_classes=num_classes, dtype=dtype)
