"""Spherical noise masks and the generator's input channels.

Patches are [32, 64, 64] (D, H, W) at 2×1×1 mm, so a sphere in mm is an ellipsoid in voxels.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

VOXEL_MM = (2.0, 1.0, 1.0)  # D, H, W
MAX_DIAMETER_MM = 32.0      # scales the diameter channel to ~[0, 1]
MIN_HOLE_RADIUS_MM = 3.0    # no hole is smaller, whatever the size asked for


def sphere_mask(shape, radius_mm: jax.Array, centre_offset_mm: jax.Array | None = None
                ) -> jax.Array:
  """Spheres centred on the patch centre (plus an offset).

  Args:
    shape: (D, H, W).
    radius_mm: [B] radii.
    centre_offset_mm: [B, 3] (z, y, x) offsets from the patch centre, or None.
  Returns: [B, D, H, W, 1] float32, 1 inside.
  """
  grid = _grid_mm(shape)
  if centre_offset_mm is None:
    centre_offset_mm = jnp.zeros((radius_mm.shape[0], 3))
  d2 = jnp.sum((grid[None] - centre_offset_mm[:, None, None, None]) ** 2, -1)
  return (d2 <= radius_mm[:, None, None, None] ** 2).astype(jnp.float32)[..., None]


def _grid_mm(shape) -> jax.Array:
  """[D, H, W, 3] (z, y, x) mm of each voxel from the patch centre."""
  axes = [(jnp.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, VOXEL_MM)]
  return jnp.stack(jnp.meshgrid(*axes, indexing="ij"), -1)


def centroid_mm(mask: jax.Array) -> jax.Array:
  """[B, D, H, W, 1] -> [B, 3] (z, y, x) mm of each mask's centroid from the patch centre;
  0 for an empty mask."""
  weight = mask[..., 0]
  total = jnp.sum(weight, (1, 2, 3))
  moment = jnp.einsum("bdhw,dhwk->bk", weight, _grid_mm(mask.shape[1:4]))
  return jnp.where(total[:, None] > 0, moment / jnp.maximum(total, 1e-6)[:, None], 0.0)


def dilate(mask: jax.Array, margin_mm: float) -> jax.Array:
  """[B, D, H, W, 1] -> the same, grown by at least `margin_mm` along every axis (a box
  of half-width ceil(margin / voxel) voxels per axis, which contains the ball of that radius)."""
  half = [int(np.ceil(margin_mm / s - 1e-9)) for s in VOXEL_MM]
  window = (1, *(2 * h + 1 for h in half), 1)
  return jax.lax.reduce_window(mask, -jnp.inf, jax.lax.max, window, (1,) * 5, "SAME")


def hole_radius_mm(diameter_mm, margin_mm: float, scale=1.0):
  """The sphere's radius for a nodule of `diameter_mm`: (diameter/2 + margin)·scale."""
  return (diameter_mm / 2 + margin_mm) * scale


def box_start(centre_mm: jax.Array, shape, box) -> jax.Array:
  """[B, 3] int32 corner (D, H, W) of the `box` (voxels) centred on `centre_mm` [B, 3],
  moved inside `shape` where it would leave it."""
  centre_vox = centre_mm / jnp.array(VOXEL_MM) + (jnp.array(shape) - 1) / 2
  start = jnp.round(centre_vox - (jnp.array(box) - 1) / 2).astype(jnp.int32)
  return jnp.clip(start, 0, jnp.array(shape) - jnp.array(box))


def box_indicator(start: jax.Array, shape, box) -> jax.Array:
  """[B, D, H, W, 1] float32, 1 inside each sample's box (corner `start` [B, 3])."""
  inside = [(jnp.arange(n)[None] >= start[:, i:i + 1]) & (jnp.arange(n)[None] < start[:, i:i + 1] + b)
            for i, (n, b) in enumerate(zip(shape, box))]
  return (inside[0][:, :, None, None] & inside[1][:, None, :, None]
          & inside[2][:, None, None, :]).astype(jnp.float32)[..., None]


def crop_boxes(x: jax.Array, start: jax.Array, box) -> jax.Array:
  """[B, D, H, W, C] -> [B, *box, C]: each sample's box at corner `start` [B, 3].

  As three one-hot selection matmuls (one per axis) rather than a per-sample gather: the
  same values, and gradients (also the gradient penalty's second order) that stay matmuls,
  which XLA CPU runs far faster than the scatters a gather's gradient becomes.
  """
  def select(axis):   # [B, box, n]: row i picks voxel start + i
    n = x.shape[1 + axis]
    return (jnp.arange(n)[None, None] == start[:, axis, None, None]
            + jnp.arange(box[axis])[None, :, None]).astype(x.dtype)
  x = jnp.einsum("bid,bdhwc->bihwc", select(0), x)
  x = jnp.einsum("bjh,bihwc->bijwc", select(1), x)
  return jnp.einsum("bkw,bijwc->bijkc", select(2), x)


class Hole(NamedTuple):
  mask: jax.Array    # [B, D, H, W, 1] float32, 1 = in-painted
  start: jax.Array   # [B, 3] int32 corner of D_local's box, which contains the hole


def make_hole(rng: jax.Array, diameter_mm: jax.Array, nodule_mask: jax.Array | None, shape,
              box, *, margin_mm: float, jitter: float, shift_mm: float,
              min_radius_mm: float = MIN_HOLE_RADIUS_MM) -> Hole:
  """The region to in-paint: it covers the nodule and fits D_local's box.

  A sphere of radius (diameter/2 + margin)·U[1, 1 + jitter] on the nodule's centroid
  (the consensus mask's, after augmentation) ± U[-shift, shift] mm per axis, united with the
  consensus mask dilated by the margin; then cut to the `box` (voxels, D, H, W) centred on
  the centroid — `check_box` makes sure the box holds every hole of the nodules trained on.
  diameter_mm: [B]; nodule_mask: [B, D, H, W, 1] or None (no nodule: a sphere on the centre).
  """
  k_scale, k_shift = jax.random.split(rng)
  b = diameter_mm.shape[0]
  if nodule_mask is None:
    nodule_mask = jnp.zeros((b, *shape, 1), jnp.float32)
  centre = centroid_mm(nodule_mask)
  scale = jax.random.uniform(k_scale, (b,), minval=1.0, maxval=1 + jitter)
  radius = jnp.maximum(hole_radius_mm(diameter_mm, margin_mm, scale), min_radius_mm)
  offset = jax.random.uniform(k_shift, (b, 3), minval=-shift_mm, maxval=shift_mm)
  hole = jnp.maximum(sphere_mask(shape, radius, centre + offset), dilate(nodule_mask, margin_mm))
  start = box_start(centre, shape, box)
  return Hole(hole * box_indicator(start, shape, box), start)


def check_box(box, working_shape, max_diameter_mm: float, margin_mm: float, jitter: float,
              shift_mm: float) -> None:
  """ValueError unless D_local's `box` (voxels) fits in the working shape and holds the
  largest sphere: radius (max_diameter/2 + margin)·(1 + jitter), shifted by up to `shift_mm`
  per axis from the centroid. The box is centred on the centroid rounded to a voxel, so along
  each axis it holds every voxel closer than (box/2 - 1/2) voxels to the centroid."""
  reach = hole_radius_mm(max_diameter_mm, margin_mm, 1 + jitter) + shift_mm
  if any(b > w for b, w in zip(box, working_shape)):
    raise ValueError(f"config.model.local_box {tuple(box)} is larger than the working shape "
                     f"{tuple(working_shape)} (config.data.crop)")
  if any(reach >= (b / 2 - 0.5) * s for b, s in zip(box, VOXEL_MM)):
    need = tuple(int(np.floor(reach / s + 0.5)) * 2 + 2 for s in VOXEL_MM)
    raise ValueError(
        f"config.model.local_box {tuple(box)} (voxels D, H, W at {VOXEL_MM} mm) cannot hold the "
        f"hole of a {max_diameter_mm:g} mm nodule (config.mask.max_diameter_mm) with margin "
        f"{margin_mm:g} mm, jitter {jitter:g} and shift {shift_mm:g} mm: it needs at least "
        f"{need}; enlarge the box (and config.data.crop) or lower max_diameter_mm")


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
                     diameter_mm: jax.Array | None = None, ratings: jax.Array | None = None
                     ) -> tuple[jax.Array, jax.Array]:
  """The masked patch with noise in the hole, and the input channels for G1.

  image: [B, D, H, W, 1] in [-1, 1]; mask: [B, D, H, W, 1] (1 = hole); label: [B] 0 benign,
  1 malignant; diameter_mm: [B] or None (no size conditioning); ratings: [B, R] in [-1, 1]
  (`nodule_ratings.rating_channels`) or None (no rating conditioning).
  Returns (masked [B, D, H, W, 1], inputs [B, D, H, W, 3 (+1) (+R)]: masked, mask, label
  map (-1 benign, +1 malignant), diameter map (diameter / 32 mm), one map per rating).
  """
  noise = jax.random.uniform(rng, image.shape, minval=-1.0, maxval=1.0)
  masked = image * (1 - mask) + noise * mask
  constant = lambda value: jnp.ones_like(mask) * value[:, None, None, None, None]
  channels = [masked, mask, label_map(label, mask)]
  if diameter_mm is not None:
    channels.append(constant(diameter_mm / MAX_DIAMETER_MM))
  if ratings is not None:
    channels += [constant(ratings[:, i]) for i in range(ratings.shape[-1])]
  return masked, jnp.concatenate(channels, -1)
