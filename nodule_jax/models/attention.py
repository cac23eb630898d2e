"""3D contextual attention (Yu et al. 2018, DeepFill v1), per-sample masks.

For every position of the foreground features `f`, a softmax over the valid background
patches of `b` (cosine similarity of 3×3×3 patches at 1/rate resolution, fused with
neighbouring matches) chooses which full-resolution background patches to paste.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from nodule_jax.masks import pool_mask


def _patches(x: jax.Array, k: int, stride: int = 1, pad_before: int | None = None) -> jax.Array:
  """All k×k×k patches of x [D, H, W, C], zero-padded, at `stride`.

  Returns [D', H', W', k, k, k, C]; patch (i, j, l) starts at stride·(i, j, l) - pad_before.
  """
  d, h, w, c = x.shape
  pad_before = (k - 1) // 2 if pad_before is None else pad_before
  out = [-(-n // stride) for n in (d, h, w)]
  pad_after = [max((o - 1) * stride + k - n - pad_before, 0) for o, n in zip(out, (d, h, w))]
  xp = jnp.pad(x, [(pad_before, a) for a in pad_after] + [(0, 0)])
  idx = [jnp.arange(o)[:, None] * stride + jnp.arange(k)[None] for o in out]  # [o, k]
  p = xp[idx[0][:, None, None, :, None, None], idx[1][None, :, None, None, :, None],
         idx[2][None, None, :, None, None, :]]
  return p  # [D', H', W', k, k, k, C]


def _downsample(x: jax.Array, rate: int) -> jax.Array:
  return x[::rate, ::rate, ::rate]


def _fuse(scores: jax.Array, k: int) -> jax.Array:
  """Sums scores[f, b] with scores[f + s·e, b + s·e], |s| ≤ k//2, along each axis e in turn.

  scores: [Df, Hf, Wf, Db, Hb, Wb]; positions outside the grid contribute zero.
  """
  r = k // 2
  for axis in range(3):
    total = scores
    for s in range(1, r + 1):
      for sign in (1, -1):
        shifted = scores
        for ax in (axis, axis + 3):  # shift f and b together
          shifted = jnp.roll(shifted, -sign * s, axis=ax)
          n = scores.shape[ax]
          keep = (jnp.arange(n) + sign * s >= 0) & (jnp.arange(n) + sign * s < n)
          shape = [1] * 6
          shape[ax] = n
          shifted = shifted * keep.reshape(shape)
        total = total + shifted
    scores = total
  return scores


def _attend_one(f, b, mask, ksize, stride, rate, fuse_k, softmax_scale, fuse):
  """One sample: f, b [D, H, W, C]; mask [D, H, W, 1] (1 = hole) -> [D, H, W, C], [Nf, Nb]."""
  d, h, w, c = f.shape
  raw = _patches(b, 2 * rate, stride=rate * stride, pad_before=rate // 2)  # full-res patches
  fd, bd = _downsample(f, rate), _downsample(b, rate)
  md = pool_mask(mask, rate)                             # any hole voxel in the block
  bp = _patches(bd, ksize, stride)                      # [Db, Hb, Wb, k, k, k, C]
  nb = bp.shape[:3]
  bp = bp.reshape(-1, ksize ** 3 * c)
  bp = bp / jnp.maximum(jnp.linalg.norm(bp, axis=-1, keepdims=True), 1e-4)
  mp = _patches(md, ksize, stride).reshape(-1, ksize ** 3)
  valid = (mp.max(axis=-1) == 0).astype(f.dtype)        # [Nb]: no masked voxel in the patch
  fp = _patches(fd, ksize).reshape(-1, ksize ** 3 * c)   # conv(f, bp) as a matmul
  scores = fp @ bp.T                                     # [Nf, Nb]
  nf = fd.shape[:3]
  if fuse:
    scores = _fuse(scores.reshape(*nf, *nb), fuse_k).reshape(scores.shape)
  scores = scores * valid
  attn = jax.nn.softmax(scores * softmax_scale + (valid - 1) * 1e9, axis=-1) * valid
  # Paste: each f position gets attn @ raw patches (2r × 2r × 2r × C) overlap-added at stride r.
  raw = raw.reshape(-1, (2 * rate) ** 3 * c)
  pasted = (attn @ raw).reshape(*nf, 2 * rate, 2 * rate, 2 * rate, c)
  out = _overlap_add(pasted, rate, (d, h, w)) / float(2 ** 3)
  return out, attn


def _overlap_add(p: jax.Array, rate: int, shape) -> jax.Array:
  """Transposed conv of patches p [n0, n1, n2, k, k, k, C] (k = 2·rate) at stride `rate`.

  Patch i covers output rows rate·i - rate//2 ... + k - 1 (the adjoint of `_patches`).
  """
  n, k, c = p.shape[:3], p.shape[3], p.shape[-1]
  full = [(ni - 1) * rate + k for ni in n]
  out = jnp.zeros((*full, c), p.dtype)
  steps = range(k // rate)  # the k/rate sub-blocks of a patch along each axis
  for i in steps:
    for j in steps:
      for l in steps:
        block = p[:, :, :, i * rate:(i + 1) * rate, j * rate:(j + 1) * rate,
                  l * rate:(l + 1) * rate]                      # [n0,n1,n2,r,r,r,C]
        block = block.transpose(0, 3, 1, 4, 2, 5, 6).reshape(
            n[0] * rate, n[1] * rate, n[2] * rate, c)
        out = out.at[i * rate:i * rate + n[0] * rate, j * rate:j * rate + n[1] * rate,
                     l * rate:l * rate + n[2] * rate].add(block)
  s = rate // 2
  return out[s:s + shape[0], s:s + shape[1], s:s + shape[2]]


def contextual_attention(f: jax.Array, b: jax.Array, mask: jax.Array, *, ksize: int = 3,
                         stride: int = 1, rate: int = 2, fuse_k: int = 3,
                         softmax_scale: float = 10.0, fuse: bool = True,
                         return_attention: bool = False):
  """3D contextual attention.

  Args:
    f: foreground features [B, D, H, W, C].
    b: background features [B, D, H, W, C] (usually the same tensor as f).
    mask: [B, D, H, W, 1], 1 = hole; per sample. A background patch (at 1/rate resolution,
      the mask max-pooled) is used only if it contains no hole voxel.
  Returns:
    [B, D, H, W, C] (and the attention [B, Nf, Nb] if `return_attention`).
  D, H, W must be divisible by `rate`.
  """
  fn = lambda f1, b1, m1: _attend_one(f1, b1, m1, ksize, stride, rate, fuse_k,
                                      softmax_scale, fuse)
  out, attn = jax.vmap(fn)(f, b, mask.astype(f.dtype))
  return (out, attn) if return_attention else out
