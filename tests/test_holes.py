"""The in-painted hole covers the nodule and D_local's box holds the hole."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.synthesis import get_config
from nodule_jax import input_pipeline, masks, train_synthesis
from nodule_jax.inpaint import check_config, crop_batch, working_shape


def test_centroid_and_dilation_by_hand():
  mask = np.zeros((1, 8, 10, 10, 1), np.float32)
  mask[0, 2, 3, 4] = mask[0, 2, 3, 6] = 1                  # centroid voxel (2, 3, 5)
  centre = np.asarray(masks.centroid_mm(jnp.asarray(mask)))[0]
  np.testing.assert_allclose(centre, [(2 - 3.5) * 2, 3 - 4.5, 5 - 4.5])
  np.testing.assert_array_equal(masks.centroid_mm(jnp.zeros((1, 8, 10, 10, 1))), [[0, 0, 0]])
  grown = np.asarray(masks.dilate(jnp.asarray(mask), 3.0))[0, ..., 0]
  # 3 mm: 2 voxels along D (2 mm), 3 along H and W (1 mm)
  idx = np.argwhere(grown)
  np.testing.assert_array_equal(idx.min(0), [0, 0, 1])
  np.testing.assert_array_equal(idx.max(0), [4, 6, 9])


def test_crop_boxes_equal_slicing():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 16, 40, 40, 2)), jnp.float32)
  start = jnp.array([[0, 0, 0], [0, 5, 8], [0, 8, 8]])
  got = masks.crop_boxes(x, start, (16, 32, 32))
  for b in range(3):
    s = np.asarray(start[b])
    np.testing.assert_array_equal(got[b], x[b, s[0]:s[0] + 16, s[1]:s[1] + 32, s[2]:s[2] + 32])


@pytest.mark.parametrize("variant,scale", [("demo", 0.0), ("demo", 0.3), ("paper", 0.0)])
def test_holes_cover_augmented_nodules_and_fit_the_local_box(built, variant, scale):
  """On phantom shards after the training augmentation (with scaling: up to 1.3×, never past
  the largest diameter): no consensus voxel outside the hole, and D_local's crop holds every
  hole voxel."""
  config = get_config(variant)
  config.data.scale = scale
  shape, box = working_shape(config), tuple(config.model.local_box)
  max_d = config.mask.max_diameter_mm
  ds = input_pipeline.train_stream(str(built[0]), 8, seed=1,
                                   aug=train_synthesis.augmentation(config),
                                   keep=lambda ex: ex["diameter_mm"] <= max_d)
  checked = 0
  for i, batch in enumerate(ds.as_numpy_iterator()):
    if i == 4:
      break
    assert np.all(batch["diameter_mm"] <= max_d)
    batch = crop_batch(batch, shape)
    nodule = jnp.asarray(batch["mask"])
    hole = masks.make_hole(jax.random.PRNGKey(i), jnp.asarray(batch["diameter_mm"]), nodule,
                           shape, box, margin_mm=config.mask.margin_mm,
                           jitter=config.mask.jitter, shift_mm=config.mask.shift_mm)
    h = np.asarray(hole.mask, bool)
    assert not np.any(np.asarray(nodule, bool) & ~h)
    grown = np.asarray(masks.dilate(nodule, config.mask.margin_mm), bool)
    assert not np.any(grown & ~h)                      # the margin too
    crop = np.asarray(masks.crop_boxes(hole.mask, hole.start, box))
    np.testing.assert_array_equal(crop.sum((1, 2, 3, 4)), h.sum((1, 2, 3, 4)))
    checked += int(np.asarray(nodule).any((1, 2, 3, 4)).sum())
  assert checked >= 16


def test_a_box_too_small_for_the_holes_is_an_error(built, tmp_path):
  config = get_config("demo")
  check_config(config)
  config.model.local_box = (8, 16, 16)
  with pytest.raises(ValueError, match="local_box .* cannot hold the hole of a 22 mm nodule"):
    check_config(config)
  config = get_config("smoke")
  config.data.data_dir = str(built[0])
  config.mask.max_diameter_mm = 60.0
  with pytest.raises(ValueError, match="max_diameter_mm"):
    train_synthesis.train_and_evaluate(config, tmp_path)
  assert not (tmp_path / "checkpoints").exists()        # nothing started
  config = get_config("smoke")
  config.model.local_box = (24, 48, 48)                 # 24 does not halve 4 times
  with pytest.raises(ValueError, match="multiple of 16"):
    check_config(config)
  config = get_config("smoke")
  config.mask.oversized = 1.5
  with pytest.raises(ValueError, match="mask.oversized=1.5"):
    check_config(config)
  config.mask.oversized = 0.5                           # smoke has no diameter channel
  with pytest.raises(ValueError, match="needs model.size_conditioning"):
    check_config(config)
