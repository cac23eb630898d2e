"""3D contextual attention against a slow loop-based NumPy reference."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nodule_jax.models.attention import contextual_attention


def _get(x, idx):
  """x[idx] or zeros when idx is outside x (zero padding)."""
  if all(0 <= i < n for i, n in zip(idx, x.shape)):
    return x[idx]
  return np.zeros(x.shape[3:])


def _block(x, start, k):
  return np.stack([_get(x, tuple(np.add(start, o))) for o in itertools.product(range(k), repeat=3)])


def reference(f, b, mask, ksize=3, rate=2, fuse_k=3, scale=10.0, fuse=True):
  """One sample, written from the algorithm's description with explicit loops."""
  d, h, w, c = f.shape
  fd, bd = f[::rate, ::rate, ::rate], b[::rate, ::rate, ::rate]
  grid = fd.shape[:3]
  md = np.zeros(grid + (1,))
  for p in np.ndindex(*grid):
    md[p] = mask[p[0] * rate:(p[0] + 1) * rate, p[1] * rate:(p[1] + 1) * rate,
                 p[2] * rate:(p[2] + 1) * rate].max()
  pos = list(np.ndindex(*grid))
  r = ksize // 2
  S = np.zeros(grid + grid)
  valid = np.zeros(grid)
  for q in pos:
    bp = _block(bd, np.subtract(q, r), ksize)
    bp = bp / max(np.linalg.norm(bp), 1e-4)
    valid[q] = _block(md, np.subtract(q, r), ksize).max() == 0
    for p in pos:
      S[p + q] = np.sum(_block(fd, np.subtract(p, r), ksize) * bp)
  if fuse:
    for axis in range(3):
      T = np.zeros_like(S)
      for p in pos:
        for q in pos:
          for s in range(-(fuse_k // 2), fuse_k // 2 + 1):
            e = np.eye(3, dtype=int)[axis] * s
            pp, qq = tuple(np.add(p, e)), tuple(np.add(q, e))
            if all(0 <= i < n for i, n in zip(pp + qq, grid + grid)):
              T[p + q] += S[pp + qq]
      S = T
  out = np.zeros_like(f)
  for p in pos:
    logits = np.array([S[p + q] * scale if valid[q] else -np.inf for q in pos])
    if not np.isfinite(logits).any():
      continue
    a = np.exp(logits - logits[np.isfinite(logits)].max())
    a = np.where(np.isfinite(logits), a, 0) / a[np.isfinite(logits)].sum()
    for q, aq in zip(pos, a):
      if aq == 0:
        continue
      for o in itertools.product(range(2 * rate), repeat=3):
        src = tuple(np.multiply(q, rate) - rate // 2 + np.array(o))
        dst = tuple(np.multiply(p, rate) - rate // 2 + np.array(o))
        if all(0 <= i < n for i, n in zip(dst, (d, h, w))):
          out[dst] += aq * _get(b, src)
  return out / 8.0


@pytest.mark.parametrize("fuse", [True, False])
def test_matches_loop_reference_with_per_sample_masks(fuse):
  rng = np.random.default_rng(0)
  f = rng.normal(size=(2, 4, 6, 8, 3)).astype(np.float32)
  b = rng.normal(size=(2, 4, 6, 8, 3)).astype(np.float32)
  mask = np.zeros((2, 4, 6, 8, 1), np.float32)
  mask[0, 0:2, 2:4, 2:5] = 1
  mask[1, 2:4, 0:3, 4:8] = 1
  out = contextual_attention(jnp.asarray(f), jnp.asarray(b), jnp.asarray(mask), fuse=fuse)
  for i in range(2):
    np.testing.assert_allclose(np.asarray(out[i]), reference(f[i], b[i], mask[i], fuse=fuse),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fuse", [True, False])
def test_hole_copies_the_exactly_matching_background_patch(fuse):
  rng = np.random.default_rng(1)
  b = rng.normal(size=(1, 8, 16, 16, 4)).astype(np.float32)
  f = b.copy()
  f[:, :, :, 0:8] = b[:, :, :, 8:16]  # the hole's neighbourhood equals the region 8 voxels on
  mask = np.zeros((1, 8, 16, 16, 1), np.float32)
  mask[:, 2:6, 4:12, 2:6] = 1
  out, attn = contextual_attention(jnp.asarray(f), jnp.asarray(b), jnp.asarray(mask),
                                   softmax_scale=50.0, fuse=fuse, return_attention=True)
  inner = (slice(3, 5), slice(5, 11), slice(3, 5))
  copied = (slice(3, 5), slice(5, 11), slice(11, 13))
  np.testing.assert_allclose(np.asarray(out[0][inner]), b[0][copied], atol=1e-4)
  assert float(jnp.max(attn)) > 0.999
  # Attention never lands on a patch that touches the hole.
  grid = (4, 8, 8)
  hole_q = np.zeros(grid, bool)
  md = mask[0, ::2, ::2, ::2, 0] > 0
  for q in np.ndindex(*grid):
    lo = np.maximum(np.subtract(q, 1), 0)
    hole_q[q] = md[lo[0]:q[0] + 2, lo[1]:q[1] + 2, lo[2]:q[2] + 2].any()
  assert float(jnp.abs(attn[0][:, hole_q.reshape(-1)]).max()) == 0.0


def test_is_differentiable_and_jits():
  rng = np.random.default_rng(2)
  f = jnp.asarray(rng.normal(size=(2, 8, 8, 8, 2)), jnp.float32)
  mask = jnp.zeros((2, 8, 8, 8, 1)).at[:, 2:4, 2:6, 2:6].set(1)
  g = jax.jit(jax.grad(lambda x: jnp.sum(contextual_attention(x, x, mask) ** 2)))(f)
  assert g.shape == f.shape and bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).sum()) > 0
