"""Masks, layers and models of the in-painting GAN: shapes, initialisation, the output clip."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.synthesis import get_config
from nodule_jax import inpaint, train_synthesis
from nodule_jax.masks import generator_inputs, sphere_mask
from nodule_jax.models.generator import HourGlass, clip_recoverable
from nodule_jax.models.layers import Down, Up, depth_to_space, space_to_depth


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
  kernel = variables["params"]["Conv_0"]["kernel"]
  assert kernel.shape == (3, 3, 3, 6, 32) and np.std(kernel[..., :4]) > 0.05


def test_generator_and_critic_shapes():
  config = get_config("smoke")
  models = inpaint.build_models(config)
  batch = {"image": jnp.zeros((2, 32, 64, 64, 1)), "label": jnp.array([0, 1]),
           "diameter_mm": jnp.array([6.0, 12.0])}                  # no mask: sphere on the centre
  state = train_synthesis.init_state(jax.random.PRNGKey(0), config, models, optax.adam(1e-3),
                        optax.adam(1e-3), batch_size=2)
  out = inpaint.inpaint(config, models, state.g_params, batch, jax.random.PRNGKey(1))
  np.testing.assert_allclose(np.argwhere(np.asarray(out["mask"])[0, ..., 0]).mean(0),
                             [15.5, 31.5, 31.5], atol=1.0)
  for k in ("x1", "x2", "fake"):
    assert out[k].shape == (2, 32, 64, 64, 1)
    assert float(jnp.max(jnp.abs(out[k]))) <= 1.0
  outside = np.asarray(out["mask"]) == 0
  assert np.all(np.asarray(out["fake"])[outside] == 0.0)  # the real background is kept
  image = jax.random.normal(jax.random.PRNGKey(2), (2, 32, 64, 64, 1))
  w0, aux0 = models.global_.apply({"params": state.d_params["global"]}, image, jnp.array([0, 0]))
  w1, aux1 = models.global_.apply({"params": state.d_params["global"]}, image, jnp.array([1, 1]))
  assert w0.shape == (2,) and aux0.shape == (2, 3)
  # the class reaches the WGAN head (projection) and never the aux head
  np.testing.assert_array_equal(aux0, aux1)
  assert float(jnp.max(jnp.abs(w0 - w1))) > 1e-4


def test_output_clip_passes_gradients_that_point_back_inside():
  x = jnp.array([-2.0, -2.0, 0.5, 2.0, 2.0])
  np.testing.assert_array_equal(clip_recoverable(x), jnp.clip(x, -1.0, 1.0))
  weight = jnp.array([1.0, -1.0, 1.0, 1.0, -1.0])   # d(loss)/d(output) of each voxel
  grad = jax.grad(lambda v: jnp.sum(clip_recoverable(v) * weight))(x)
  # below -1 only the gradient that raises it (descent moves by -grad) passes; above +1
  # only the one that lowers it; inside, every one
  np.testing.assert_array_equal(grad, [0.0, -1.0, 1.0, 1.0, 0.0])


def test_a_generator_past_minus_one_everywhere_still_learns():
  """With a plain clip, an output past -1 in every voxel gets no gradient: the collapse a
  seed of the demo's config fell into (every hole air)."""
  model = HourGlass(width=4, depth=1, dilations=(1,))
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 8, 8, 8, 2))
  params = model.init(jax.random.PRNGKey(1), x)["params"]
  params["Up_0"]["Conv_0"]["bias"] = params["Up_0"]["Conv_0"]["bias"] - 20.0
  assert np.all(np.asarray(model.apply({"params": params}, x)) == -1.0)
  loss = lambda q: jnp.mean(jnp.abs(model.apply({"params": q}, x) - 0.0))
  grads = jax.grad(loss)(params)
  assert float(optax.global_norm(grads)) > 0.1
  for _ in range(30):
    params = jax.tree_util.tree_map(lambda q, g: q - 1.0 * g, params, jax.grad(loss)(params))
  assert float(jnp.mean(model.apply({"params": params}, x))) > -1.0   # off the bound


def test_transposed_upsampling_option_has_the_shapes_and_fewer_flops():
  """model.upsample="transpose": the same generator shapes, trainable, and ~3× fewer FLOPs in
  the up-sampling layers than the sub-pixel form (XLA's count)."""
  from nodule_jax.models.layers import Up
  from nodule_jax.vs_torch import xla_cost
  x = jnp.ones((1, 4, 8, 8, 16))
  flops = {}
  for mode in ("subpixel", "transpose"):
    up = Up(16, mode=mode)
    params = up.init(jax.random.PRNGKey(0), x)
    assert up.apply(params, x).shape == (1, 8, 16, 16, 16)
    flops[mode] = xla_cost(jax.jit(up.apply).lower(params, x).compile())
  assert 2.5 < flops["subpixel"] / flops["transpose"] < 3.6
  with pytest.raises(ValueError, match="upsampling must be one of"):
    Up(4, mode="nearest").init(jax.random.PRNGKey(0), x)
  config = get_config("smoke")
  config.model.upsample = "transpose"
  models = inpaint.build_models(config)
  batch = {"image": jnp.zeros((2, 32, 64, 64, 1)), "label": jnp.array([0, 1]),
           "diameter_mm": jnp.array([6.0, 12.0])}
  g_params = train_synthesis.init_state(jax.random.PRNGKey(0), config, models, optax.adam(1e-3),
                                        optax.adam(1e-3), batch_size=2).g_params
  assert any("ConvTranspose" in "/".join(map(str, path))
             for path, _ in jax.tree_util.tree_flatten_with_path(g_params)[0])
  loss = lambda g: jnp.mean(inpaint.inpaint(config, models, g, batch, jax.random.PRNGKey(1))["x2"])
  grads = jax.grad(loss)(g_params)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert inpaint.inpaint(config, models, g_params, batch, jax.random.PRNGKey(1))["x2"].shape == (
      2, 32, 64, 64, 1)
