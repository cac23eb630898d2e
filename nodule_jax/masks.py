"""Spherical noise masks and the generator's input channels.

Patches are [32, 64, 64] (D, H, W) at 2×1×1 mm, so a sphere in mm is an ellipsoid in voxels.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

VOXEL_MM = (2.0, 1.0, 1.0)  # D, H, W
MAX_DIAMETER_MM = 32.0      # scales the diameter channel to ~[0, 1]


def sphere_mask(shape, radius_mm: jax.Array, centre_offset_mm: jax.Array | None = None
                ) -> jax.Array:
  """Spheres centred on the patch centre (plus an offset).

  Args:
    shape: (D, H, W).
    radius_mm: [B] radii.
    centre_offset_mm: [B, 3] (z, y, x) offsets from the patch centre, or None.
  Returns: [B, D, H, W, 1] float32, 1 inside.
  """
  axes = [(jnp.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, VOXEL_MM)]
  z, y, x = jnp.meshgrid(*axes, indexing="ij")
  grid = jnp.stack([z, y, x], -1)  # [D, H, W, 3] mm from the centre
  if centre_offset_mm is None:
    centre_offset_mm = jnp.zeros((radius_mm.shape[0], 3))
  d2 = jnp.sum((grid[None] - centre_offset_mm[:, None, None, None]) ** 2, -1)
  return (d2 <= radius_mm[:, None, None, None] ** 2).astype(jnp.float32)[..., None]


def random_mask(rng: jax.Array, diameter_mm: jax.Array, shape, *, margin_mm: float,
                jitter: float, shift_mm: float, min_radius_mm: float = 3.0) -> jax.Array:
  """Training masks: radius = (diameter/2 + margin)·U[1-jitter, 1+jitter], centre ± shift.

  diameter_mm: [B]. Returns [B, D, H, W, 1].
  """
  k1, k2 = jax.random.split(rng)
  b = diameter_mm.shape[0]
  scale = jax.random.uniform(k1, (b,), minval=1 - jitter, maxval=1 + jitter)
  radius = jnp.maximum((diameter_mm / 2 + margin_mm) * scale, min_radius_mm)
  offset = jax.random.uniform(k2, (b, 3), minval=-shift_mm, maxval=shift_mm)
  return sphere_mask(shape, radius, offset)


def pool_mask(mask: jax.Array, factor: int) -> jax.Array:
  """[..., D, H, W, 1] -> [..., D/f, H/f, W/f, 1]: 1 where any voxel of the f³ block is a hole."""
  window = (1,) * (mask.ndim - 4) + (factor, factor, factor, 1)
  return jax.lax.reduce_window(mask, -jnp.inf, jax.lax.max, window, window, "VALID")


def label_map(label: jax.Array, like: jax.Array) -> jax.Array:
  """The class as a channel: label [B] (0 benign, 1 malignant) -> [B, D, H, W, 1] of -1 / +1,
  shaped like `like` [B, D, H, W, 1]."""
  value = 2.0 * label.astype(like.dtype) - 1.0
  return jnp.ones_like(like) * value[:, None, None, None, None]


def generator_inputs(image: jax.Array, mask: jax.Array, label: jax.Array, rng: jax.Array,
                     diameter_mm: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """The masked patch with noise in the hole, and the input channels for G1.

  image: [B, D, H, W, 1] in [-1, 1]; mask: [B, D, H, W, 1] (1 = hole); label: [B] 0 benign,
  1 malignant; diameter_mm: [B] or None (no size conditioning).
  Returns (masked [B, D, H, W, 1], inputs [B, D, H, W, 3 or 4]: masked, mask, label map
  (-1 benign, +1 malignant), diameter map (diameter / 32 mm)).
  """
  noise = jax.random.uniform(rng, image.shape, minval=-1.0, maxval=1.0)
  masked = image * (1 - mask) + noise * mask
  channels = [masked, mask, label_map(label, mask)]
  if diameter_mm is not None:
    channels.append(jnp.ones_like(mask) * (diameter_mm / MAX_DIAMETER_MM)[:, None, None, None, None])
  return masked, jnp.concatenate(channels, -1)
