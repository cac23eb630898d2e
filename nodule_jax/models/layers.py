"""3D building blocks that are fast under XLA on CPU (DESIGN §5), channels-last [B, D, H, W, C].

XLA CPU runs the input gradient of strided convolutions and any transposed convolution
20–100× slower than oneDNN. So resolution changes are done by rearranging voxels:
`space_to_depth` (2×2×2 blocks into channels) + a stride-1 conv to go down,
a stride-1 conv to 8× channels + `depth_to_space` ("sub-pixel") to go up.
On one CPU device the convs run in oneDNN through XLA custom calls (`models.onednn`),
or, where it cannot be built, the stride-1 ones as one matmul over gathered patches
(`conv_as_matmul`): XLA CPU's own 3D conv reaches a few GFLOP/s at the small channel
counts of these models and less when dilated; see `conv_impl`.
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from nodule_jax.models import onednn


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


def icnr(init: Callable = nn.initializers.lecun_normal(), r: int = 2) -> Callable:
  """Initialiser for a conv feeding `depth_to_space` (ICNR, Aitken et al. 2017).

  Kernel [k, k, k, Cin, r³·F]: one [k, k, k, Cin, F] kernel repeated for the r³ sub-positions,
  so the up-sampling starts as conv + nearest-neighbour and not with a checkerboard.
  """
  def init_fn(key, shape, dtype=jnp.float32):
    base = init(key, (*shape[:-1], shape[-1] // r ** 3), dtype)
    return jnp.tile(base, (1,) * (len(shape) - 1) + (r ** 3,))
  return init_fn


IMPLS = ("auto", "xla", "matmul", "onednn")
ENV_VAR = "NODULE_JAX_CONV"            # the process's default choice (the test suite's: xla)
_impl = os.environ.get(ENV_VAR, "auto")
if _impl not in IMPLS:
  raise ValueError(f"{ENV_VAR} must be one of {IMPLS}, got {_impl!r}")


@contextlib.contextmanager
def conv_impl(name: str) -> Iterator[None]:
  """Chooses how `conv3d` computes, for the functions traced inside the block.

  "xla": `lax.conv_general_dilated`; "matmul": patches gathered by slicing then one matmul
  (same function, float rounding aside; 27× the activation memory for a 3×3×3 kernel);
  "onednn": oneDNN's convolution through XLA custom calls (`models.onednn`; an error if it
  cannot be built) for float32 and bfloat16 convs (bf16 where the CPU has AVX-512),
  strided and grouped too, "xla" for the others; "auto" (the default): on a single CPU
  device "onednn" where it is usable, else "matmul" for ungrouped convs, and "xla"
  elsewhere (cuDNN / the TPU's convolutions need no help; XLA cannot partition a custom
  call over a mesh). The default outside any block comes from the environment
  variable NODULE_JAX_CONV. On the demo's shapes oneDNN runs 3–60× faster than XLA's CPU
  conv and compiles as fast; the matmul form runs 2–8× faster than XLA's but compiles
  ~0.5 s slower per conv.
  """
  global _impl
  if name not in IMPLS:
    raise ValueError(f"conv_impl must be one of {IMPLS}, got {name!r}")
  previous, _impl = _impl, name
  try:
    yield
  finally:
    _impl = previous


def _choose(groups: int, dtype, padding) -> str:
  """The implementation `conv3d` uses for one conv: "xla", "matmul" or "onednn"."""
  usable = onednn.supports(dtype, padding)
  if _impl == "onednn":
    return "onednn" if usable else "xla"
  if _impl != "auto":
    return _impl
  if jax.default_backend() != "cpu":
    return "xla"
  if usable and jax.device_count() == 1 and onednn.status()[0]:
    return "onednn"
  return "matmul" if groups == 1 else "xla"


def _triple(v) -> tuple:
  return tuple(v) if isinstance(v, (tuple, list)) else (v,) * 3


class Conv(nn.Module):
  """The one 3D convolution of the project. [B, D, H, W, Cin] -> [B, D', H', W', features].

  kernel [kD, kH, kW, Cin/groups, features] (PyTorch's layout transposed, so ported weights
  map one to one); strides 1 or 2 per axis (oneDNN takes them as they are; elsewhere 2
  runs as space-to-depth + a stride-1 conv, see `conv3d`); padding: per axis an int (both
  sides) or (before, after), default 'same' at stride 1 (XLA's SAME: the extra voxel of an
  even kernel goes after).
  """
  features: int
  kernel_size: int | Sequence[int] = 3
  strides: int | Sequence[int] = 1
  padding: int | Sequence | None = None
  dilation: int = 1
  groups: int = 1
  use_bias: bool = True
  act: Callable | None = None
  dtype: jnp.dtype = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    k = _triple(self.kernel_size)
    if self.padding is None:
      span = [(n - 1) * self.dilation for n in k]
      padding = [(s // 2, s - s // 2) for s in span]
    else:
      padding = _triple(self.padding)
    kernel = self.param("kernel", self.kernel_init, (*k, x.shape[-1] // self.groups,
                                                     self.features))
    y = conv3d(x.astype(self.dtype), kernel.astype(self.dtype), _triple(self.strides), padding,
               self.groups, self.dilation)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,)).astype(self.dtype)
    return self.act(y) if self.act is not None else y


class Down(nn.Module):
  """Halves D, H, W: space_to_depth then a stride-1 conv. [B,D,H,W,C] -> [B,D/2,H/2,W/2,F]."""
  features: int
  act: Callable | None = nn.elu
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return Conv(self.features, act=self.act, dtype=self.dtype)(space_to_depth(x))


UPSAMPLING = ("subpixel", "transpose")


class Up(nn.Module):
  """Doubles D, H, W. [B, D, H, W, C] -> [B, 2D, 2H, 2W, F].

  "subpixel" (default): a 3³ stride-1 conv to 8·F channels (ICNR init) then depth_to_space,
  fast on CPUs (XLA CPU's transposed conv is 20–100× slower than oneDNN's); "transpose": a
  4³ stride-2 transposed conv, ~3× fewer FLOPs (8·8 against 27·8 multiply-adds per low-res
  voxel and channel pair), what cuDNN and TPUs run well.
  """
  features: int
  act: Callable | None = nn.elu
  dtype: jnp.dtype = jnp.float32
  mode: str = "subpixel"

  @nn.compact
  def __call__(self, x):
    if self.mode == "subpixel":
      x = depth_to_space(Conv(8 * self.features, dtype=self.dtype, kernel_init=icnr())(x))
    elif self.mode == "transpose":
      x = nn.ConvTranspose(self.features, (4, 4, 4), strides=(2, 2, 2), padding="SAME",
                           dtype=self.dtype)(x)
    else:
      raise ValueError(f"upsampling must be one of {UPSAMPLING}, got {self.mode!r}")
    return self.act(x) if self.act is not None else x


def conv3d(x: jax.Array, kernel: jax.Array, strides=(1, 1, 1), padding=(0, 0, 0),
           groups: int = 1, dilation: int = 1) -> jax.Array:
  """PyTorch-style Conv3d, fast on XLA CPU for stride 2.

  x: [B, D, H, W, C]; kernel: [kD, kH, kW, C/groups, O]; strides per axis in {1, 2};
  padding per axis: an int (both sides) or (before, after); dilation only at stride 1.
  oneDNN (see `conv_impl`) takes the strides as they are. Otherwise, along each stride-2
  axis the input is rearranged by space-to-depth and the kernel zero-padded to an even size
  and rearranged to match, so XLA only sees a stride-1 conv:
  y[o] = Σ_k w[k]·x[2o+k-p] = Σ_a Σ_b w[2a+b]·x'[2(o+a)+b]. Same function, same parameters.
  """
  n = x.shape[1:4]
  k = kernel.shape[:3]
  pairs = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
  if dilation != 1 and any(s != 1 for s in strides):
    raise ValueError("dilation needs stride 1")
  if any(s not in (1, 2) for s in strides):
    raise ValueError(f"strides must be 1 or 2, got {strides}")
  if _choose(groups, x.dtype, pairs) == "onednn":   # oneDNN's own strided kernels
    return onednn.conv3d(x, kernel.astype(x.dtype), pairs, dilation, strides, groups)
  lax_pad = []
  for axis in range(3):
    if strides[axis] == 1:
      lax_pad.append(pairs[axis])
      continue
    before, after = pairs[axis]
    out = (n[axis] + before + after - k[axis]) // 2 + 1
    taps = -(-k[axis] // 2)
    total = 2 * (out + taps - 1)
    pads = [(0, 0)] * 5
    pads[axis + 1] = (before, total - n[axis] - before)
    x = jnp.pad(x, pads)
    kpads = [(0, 0)] * 5
    kpads[axis] = (0, 2 * taps - k[axis])
    kernel = jnp.pad(kernel, kpads)
    lax_pad.append((0, 0))
  x, kernel = _fold_stride2(x, kernel, strides)
  kernel = kernel.astype(x.dtype)
  if _choose(groups, x.dtype, lax_pad) == "matmul":
    return conv_as_matmul(x, kernel, lax_pad, dilation, groups)
  return jax.lax.conv_general_dilated(
      x, kernel, (1, 1, 1), lax_pad, rhs_dilation=(dilation,) * 3,
      dimension_numbers=("NDHWC", "DHWIO", "NDHWC"), feature_group_count=groups)


def conv_as_matmul(x: jax.Array, kernel: jax.Array, padding, dilation: int = 1,
                   groups: int = 1) -> jax.Array:
  """A stride-1 3D conv as one matmul: [B, D, H, W, C] * [kD, kH, kW, C/g, O] -> [B, D', H', W', O].

  The kD·kH·kW shifted views of the padded input are concatenated on the channel axis
  ([B, D', H', W', kD·kH·kW·C], tap-major like the reshaped kernel) and contracted with the
  kernel; its gradients are a matmul and the sum of the views' pads. padding: (before, after)
  per axis. With groups > 1 the contraction is batched over the groups.
  """
  x = jnp.pad(x, [(0, 0), *padding, (0, 0)])
  k = kernel.shape[:3]
  out = [x.shape[1 + a] - (k[a] - 1) * dilation for a in range(3)]
  views = [x[:, i * dilation:i * dilation + out[0], j * dilation:j * dilation + out[1],
             m * dilation:m * dilation + out[2]]
           for i in range(k[0]) for j in range(k[1]) for m in range(k[2])]
  patches = jnp.stack(views, -2) if groups > 1 else jnp.concatenate(views, -1)
  if groups == 1:
    return jnp.einsum("bdhwk,ko->bdhwo", patches, kernel.reshape(-1, kernel.shape[-1]))
  # [B, D', H', W', taps, g, C/g] x [taps, C/g, g, O/g]
  c, o = kernel.shape[3], kernel.shape[4]
  patches = patches.reshape(*patches.shape[:-1], groups, c)
  w = kernel.reshape(-1, c, groups, o // groups)
  y = jnp.einsum("bdhwtgc,tcgo->bdhwgo", patches, w)
  return y.reshape(*y.shape[:4], o)


def _fold_stride2(x, kernel, strides):
  """Moves the factor 2 of every stride-2 axis into channels, as (C, 2, 2, ...) so that
  channel groups stay contiguous (grouped convs keep working)."""
  axes = [a for a in range(3) if strides[a] == 2]
  if not axes:
    return x, kernel
  b, c, o = x.shape[0], x.shape[-1], kernel.shape[-1]
  xs, ks = [b], []
  for a in range(3):
    xs += [x.shape[a + 1] // 2, 2] if a in axes else [x.shape[a + 1]]
    ks += [kernel.shape[a] // 2, 2] if a in axes else [kernel.shape[a]]
  x = x.reshape(*xs, c)
  kernel = kernel.reshape(*ks, kernel.shape[3], o)
  # positions of the spatial (outer) and the factor-2 dims
  outer, inner, pos = [], [], 1
  kouter, kinner, kpos = [], [], 0
  for a in range(3):
    outer.append(pos)
    kouter.append(kpos)
    if a in axes:
      inner.append(pos + 1)
      kinner.append(kpos + 1)
      pos, kpos = pos + 2, kpos + 2
    else:
      pos, kpos = pos + 1, kpos + 1
  x = x.transpose([0] + outer + [pos] + inner)
  kernel = kernel.transpose(kouter + [kpos] + kinner + [kpos + 1])
  f = 2 ** len(axes)
  x = x.reshape(*x.shape[:4], c * f)
  kernel = kernel.reshape(*kernel.shape[:3], kernel.shape[3] * f, o)
  return x, kernel
