"""Masks, layers, models and losses of the in-painting GAN."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.synthesis import get_config
from nodule_jax import losses
from nodule_jax.masks import generator_inputs, sphere_mask
from nodule_jax.models.critic import centre_crop
from nodule_jax.models.layers import Down, Up, depth_to_space, space_to_depth
from nodule_jax import train_synthesis as ts


def test_sphere_in_mm_is_an_ellipsoid_in_voxels():
  m = np.asarray(sphere_mask((32, 64, 64), jnp.array([8.0])))[0, ..., 0]
  idx = np.argwhere(m)
  extent = idx.max(0) - idx.min(0) + 1          # voxels along D, H, W
  np.testing.assert_array_equal(extent, [8, 16, 16])  # 16 mm at 2 / 1 / 1 mm
  volume_mm3 = m.sum() * 2.0
  assert volume_mm3 == pytest.approx(4 / 3 * np.pi * 8 ** 3, rel=0.1)
  np.testing.assert_allclose(idx.mean(0), [15.5, 31.5, 31.5], atol=1e-6)


def test_generator_inputs_hide_the_hole_and_carry_label_and_size():
  image = jnp.full((2, 32, 64, 64, 1), 0.25)
  mask = sphere_mask((32, 64, 64), jnp.array([6.0, 10.0]))
  masked, inputs = generator_inputs(image, mask, jnp.array([0, 1]), jax.random.PRNGKey(0),
                                    jnp.array([8.0, 16.0]))
  assert inputs.shape == (2, 32, 64, 64, 4)
  m = np.asarray(mask, bool)
  assert np.all(np.asarray(masked)[~m] == 0.25)
  assert np.std(np.asarray(masked)[m]) > 0.3          # noise in the hole
  np.testing.assert_array_equal(np.unique(inputs[0, ..., 2]), [-1.0])
  np.testing.assert_array_equal(np.unique(inputs[1, ..., 2]), [1.0])
  np.testing.assert_allclose(inputs[1, 0, 0, 0, 3], 0.5)


def test_space_to_depth_round_trip_and_resampling_shapes():
  x = jnp.arange(2 * 4 * 6 * 8 * 3, dtype=jnp.float32).reshape(2, 4, 6, 8, 3)
  y = space_to_depth(x)
  assert y.shape == (2, 2, 3, 4, 24)
  np.testing.assert_array_equal(y[0, 0, 0, 0, :3], x[0, 0, 0, 0])     # block order: (d,h,w)
  np.testing.assert_array_equal(y[0, 0, 0, 0, 3:6], x[0, 0, 0, 1])
  np.testing.assert_array_equal(depth_to_space(y), x)
  d = Down(5).init_with_output(jax.random.PRNGKey(0), x)[0]
  u = Up(5).init_with_output(jax.random.PRNGKey(0), x)[0]
  assert d.shape == (2, 2, 3, 4, 5) and u.shape == (2, 8, 12, 16, 5)


def test_up_starts_as_nearest_neighbour_upsampling():
  """ICNR: at init every 2×2×2 output block is one value per channel (no checkerboard)."""
  x = jax.random.normal(jax.random.PRNGKey(1), (1, 3, 4, 5, 6))
  u, variables = Up(4, act=None).init_with_output(jax.random.PRNGKey(0), x)
  blocks = np.asarray(u).reshape(1, 3, 2, 4, 2, 5, 2, 4)
  np.testing.assert_allclose(blocks, np.broadcast_to(blocks[:, :, :1, :, :1, :, :1], blocks.shape),
                             atol=1e-6)
  kernel = variables["params"]["Conv_0"]["Conv_0"]["kernel"]
  assert kernel.shape == (3, 3, 3, 6, 32) and np.std(kernel[..., :4]) > 0.05


def test_generator_and_critic_shapes():
  config = get_config("smoke")
  models = ts.build_models(config)
  batch = {"image": jnp.zeros((2, 32, 64, 64, 1)), "label": jnp.array([0, 1]),
           "diameter_mm": jnp.array([6.0, 12.0])}
  state = ts.init_state(jax.random.PRNGKey(0), config, models, optax.adam(1e-3),
                        optax.adam(1e-3), batch_size=2)
  out = ts.inpaint(config, models, state.g_params, batch, jax.random.PRNGKey(1))
  for k in ("x1", "x2", "fake"):
    assert out[k].shape == (2, 32, 64, 64, 1)
    assert float(jnp.max(jnp.abs(out[k]))) <= 1.0
  outside = np.asarray(out["mask"]) == 0
  assert np.all(np.asarray(out["fake"])[outside] == 0.0)  # the real background is kept
  w, aux = models.global_.apply({"params": state.d_params["global"]},
                                jnp.zeros((2, 32, 64, 64, 2)))
  assert w.shape == (2,) and aux.shape == (2, 3)
  crop = centre_crop(jnp.zeros((2, 32, 64, 64, 2)), config.model.local_box)
  assert crop.shape == (2, *config.model.local_box, 2)


def test_gradient_penalty_of_a_linear_critic_by_hand():
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.normal(size=(4, 5, 6, 1)), jnp.float32)
  critic = lambda x: jnp.sum(x * w, axis=(1, 2, 3, 4))     # ∇ = w everywhere
  real = jnp.asarray(rng.normal(size=(3, 4, 5, 6, 1)), jnp.float32)
  fake = jnp.asarray(rng.normal(size=(3, 4, 5, 6, 1)), jnp.float32)
  gp = losses.gradient_penalty(critic, real, fake, jax.random.PRNGKey(0))
  expected = (np.sqrt(np.sum(np.asarray(w) ** 2)) - 1) ** 2
  np.testing.assert_allclose(gp, expected, rtol=1e-5)
  # A critic with ‖∇‖ = 1 has no penalty.
  unit = lambda x: critic(x) / jnp.sqrt(jnp.sum(w ** 2))
  np.testing.assert_allclose(losses.gradient_penalty(unit, real, fake, jax.random.PRNGKey(1)),
                             0.0, atol=1e-6)


def test_normalised_l1_by_hand():
  target = jnp.zeros((2, 1, 2, 2, 1))
  pred = jnp.array([[1.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 4.0]]).reshape(2, 1, 2, 2, 1)
  mask = jnp.array([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]).reshape(2, 1, 2, 2, 1)
  # sample 0: masked (1+2)/2 = 1.5, global 3/4; sample 1: masked 4/2 = 2, global 4/4
  expected = np.mean([1.5 + 0.5 * 0.75, 2.0 + 0.5 * 1.0])
  np.testing.assert_allclose(losses.recon_l1(pred, target, mask, 0.5), expected, rtol=1e-6)


def test_critic_loss_uses_fake_0_benign_1_malignant_2():
  config = get_config("smoke")
  config.loss.cls_start_step = 0
  models = ts.build_models(config)
  state = ts.init_state(jax.random.PRNGKey(0), config, models, optax.adam(1e-3),
                        optax.adam(1e-3), batch_size=2)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.uniform(-1, 1, (2, 32, 64, 64, 1)), jnp.float32),
           "label": jnp.array([0, 1]), "diameter_mm": jnp.array([6.0, 12.0])}
  key = jax.random.PRNGKey(3)
  _, metrics = ts.critic_loss(state.d_params, state.g_params, batch, key, jnp.array(0),
                              config, models)
  fake = ts.inpaint(config, models, state.g_params, batch, jax.random.split(key)[0])["fake"]
  critic = ts._critic_fns(config, models, state.d_params, batch["label"])["global"]
  ce = optax.softmax_cross_entropy_with_integer_labels
  expected = (jnp.mean(ce(critic(batch["image"])[1], jnp.array([1, 2])))
              + jnp.mean(ce(critic(fake)[1], jnp.array([0, 0]))))
  np.testing.assert_allclose(metrics["critic/cls_global"], expected, rtol=1e-5)
  assert losses.real_classes(jnp.array([0, 1])).tolist() == [1, 2]


def test_crop_batch_takes_the_centre_of_5d_entries_only():
  x = np.arange(2 * 32 * 64 * 64).reshape(2, 32, 64, 64, 1)
  out = ts.crop_batch({"image": x, "label": np.array([0, 1])}, (16, 32, 32))
  np.testing.assert_array_equal(out["image"], x[:, 8:24, 16:48, 16:48])
  np.testing.assert_array_equal(out["label"], [0, 1])
  config = get_config("demo")
  assert ts.patch_shape(config) == (16, 32, 32) and ts.patch_shape(get_config()) == (32, 64, 64)
