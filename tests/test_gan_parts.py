"""Masks, layers, models and losses of the in-painting GAN."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.synthesis import get_config
from nodule_jax import inpaint, losses, train_synthesis
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
  pred = jnp.array([[1.0, 2.0, 3.0, 0.0], [0.0, 0.0, 0.0, 4.0]]).reshape(2, 1, 2, 2, 1)
  mask = jnp.array([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]).reshape(2, 1, 2, 2, 1)
  # sample 0: masked (1+2)/2 = 1.5, global 6/4; sample 1: masked 4/2 = 2, global 4/4
  expected = np.mean([1.5 + 0.5 * 1.5, 2.0 + 0.5 * 1.0])
  np.testing.assert_allclose(losses.recon_l1(pred, target, mask, 0.5), expected, rtol=1e-6)
  # sample 0 asked for the other class: its hole has no target, only the 3 outside counts
  expected = np.mean([0.5 * 3 / 4, 2.0 + 0.5 * 1.0])
  np.testing.assert_allclose(losses.recon_l1(pred, target, mask, 0.5, jnp.array([0.0, 1.0])),
                             expected, rtol=1e-6)


def _smoke_setup(cls_start_step=2):
  config = get_config("smoke")
  config.loss.cls_start_step = cls_start_step
  models = inpaint.build_models(config)
  state = train_synthesis.init_state(jax.random.PRNGKey(0), config, models, optax.adam(1e-3),
                                     optax.adam(1e-3), batch_size=2)
  rng = np.random.default_rng(0)
  diameter = jnp.array([6.0, 12.0, 8.0, 10.0])
  batch = {"image": jnp.asarray(rng.uniform(-1, 1, (4, 32, 64, 64, 1)), jnp.float32),
           "mask": sphere_mask((32, 64, 64), diameter / 2, jnp.array([[2.0, -3.0, 1.0]] * 4)),
           "label": jnp.array([0, 1, 0, 1]), "diameter_mm": diameter}
  return config, models, state, batch


KEY = jax.random.PRNGKey(3)  # with it, both losses have factual and counterfactual samples


def _requested(batch, key=KEY, n_splits=3):
  return train_synthesis.requested_labels(jax.random.split(key, n_splits)[-1], batch["label"],
                                          0.5)


def test_critic_loss_uses_fake_0_benign_1_malignant_2():
  config, models, state, batch = _smoke_setup(cls_start_step=0)
  _, metrics = train_synthesis.critic_loss(state.d_params, state.g_params, batch, KEY, jnp.array(0),
                              config, models)
  requested = _requested(batch)
  assert requested.tolist() == [1, 0, 0, 1]          # samples 0 and 1 ask for the other class
  out = inpaint.inpaint(config, models, state.g_params, batch, jax.random.split(KEY, 3)[0],
                        requested)
  critic = train_synthesis.critic_fns(config, models, state.d_params, out["box"])["global"]
  ce = optax.softmax_cross_entropy_with_integer_labels
  expected = (jnp.mean(ce(critic(batch["image"], batch["label"])[1], jnp.array([1, 2, 1, 2])))
              + jnp.mean(ce(critic(out["fake"], requested)[1], jnp.zeros(4, int))))
  np.testing.assert_allclose(metrics["critic/cls_global"], expected, rtol=1e-5)
  assert losses.real_classes(jnp.array([0, 1])).tolist() == [1, 2]


def test_requested_labels_flip_the_asked_share():
  label = jnp.asarray(np.random.default_rng(0).integers(0, 2, 4000))
  key = jax.random.PRNGKey(0)
  np.testing.assert_array_equal(train_synthesis.requested_labels(key, label, 0.0), label)
  np.testing.assert_array_equal(train_synthesis.requested_labels(key, label, 1.0), 1 - label)
  flipped = np.mean(np.asarray(train_synthesis.requested_labels(key, label, 0.3) != label))
  assert 0.27 < flipped < 0.33


def test_requested_labels_flip_each_class_its_own_share():
  label = jnp.asarray(np.random.default_rng(0).integers(0, 2, 4000))
  key = jax.random.PRNGKey(0)
  benign, malignant = np.asarray(label) == 0, np.asarray(label) == 1
  only_malignant = np.asarray(train_synthesis.requested_labels(key, label, (0.0, 1.0)))
  assert (only_malignant == 0).all()             # benign kept, every malignant one flipped
  flipped = np.asarray(train_synthesis.requested_labels(key, label, (0.6, 0.1))) != label
  assert 0.56 < flipped[benign].mean() < 0.64 and 0.07 < flipped[malignant].mean() < 0.13
  np.testing.assert_array_equal(   # a pair of equal shares draws exactly as the one share
      train_synthesis.requested_labels(key, label, (0.3, 0.3)),
      train_synthesis.requested_labels(key, label, 0.3))


def test_crop_batch_takes_the_centre_of_5d_entries_only():
  x = np.arange(2 * 32 * 64 * 64).reshape(2, 32, 64, 64, 1)
  out = inpaint.crop_batch({"image": x, "label": np.array([0, 1])}, (16, 32, 32))
  np.testing.assert_array_equal(out["image"], x[:, 8:24, 16:48, 16:48])
  np.testing.assert_array_equal(out["label"], [0, 1])
  config = get_config("demo")
  assert (inpaint.working_shape(config) == (16, 40, 40)
          and inpaint.working_shape(get_config()) == (32, 64, 64))


def test_gradient_penalty_of_a_quadratic_critic_by_hand():
  """D(x) = ½·Σ a·x², ∇D = a·x: the penalty depends on where x̂ lies, so a weight shared by
  the batch, or x̂ = ε·fake + (1-ε)·real, gives another number."""
  rng = np.random.default_rng(0)
  a = rng.uniform(0.05, 0.2, (4, 5, 6, 1))
  real, fake = rng.normal(size=(3, 4, 5, 6, 1)), 0.1 * rng.normal(size=(3, 4, 5, 6, 1))
  critic = lambda x: 0.5 * jnp.sum(jnp.asarray(a, jnp.float32) * x ** 2, axis=(1, 2, 3, 4))
  key = jax.random.PRNGKey(7)
  gp = losses.gradient_penalty(critic, jnp.asarray(real, jnp.float32),
                               jnp.asarray(fake, jnp.float32), key)
  eps = np.asarray(jax.random.uniform(key, (3, 1, 1, 1, 1)))  # one weight per sample
  assert len(np.unique(eps)) == 3
  x_hat = eps * real + (1 - eps) * fake
  norms = np.sqrt(np.sum((a * x_hat) ** 2, axis=(1, 2, 3, 4)))
  np.testing.assert_allclose(gp, np.mean((norms - 1) ** 2), rtol=1e-4)
  swapped = eps * fake + (1 - eps) * real
  wrong = np.mean((np.sqrt(np.sum((a * swapped) ** 2, axis=(1, 2, 3, 4))) - 1) ** 2)
  shared = eps[:1] * real + (1 - eps[:1]) * fake
  shared = np.mean((np.sqrt(np.sum((a * shared) ** 2, axis=(1, 2, 3, 4))) - 1) ** 2)
  for other in (wrong, shared):                      # the test can tell them apart
    assert abs(float(gp) - other) > 0.1 * float(gp), (float(gp), other)


def _scaled_aux_heads(d_params, factor):
  """Critic parameters with the aux heads (Dense_1: 3 logits) scaled."""
  out = jax.tree.map(lambda x: x, d_params)
  for name in out:
    out[name] = dict(out[name])
    out[name]["Dense_1"] = jax.tree.map(lambda x: x * factor, out[name]["Dense_1"])
  return out


def test_cls_gate_and_ramp():
  """The critic's aux head learns from step 0; the generator's L_cls is off below
  cls_start_step, on from it, and ramps linearly to full weight over cls_ramp_steps."""
  config, models, state, batch = _smoke_setup(cls_start_step=2)
  other = _scaled_aux_heads(state.d_params, 5.0)
  for step, depends in ((0, False), (1, False), (2, True), (7, True)):
    step = jnp.array(step)
    d = [train_synthesis.critic_loss(p, state.g_params, batch, KEY, step, config, models)[0]
         for p in (state.d_params, other)]
    g = [train_synthesis.generator_loss(state.g_params, p, batch, KEY, step, config, models)[0]
         for p in (state.d_params, other)]
    assert abs(float(d[0] - d[1])) > 1e-3, (int(step), d)
    assert (abs(float(g[0] - g[1])) > 1e-3) == depends, (int(step), g)
  config.loss.cls_ramp_steps = 4
  weights = [float(train_synthesis.cls_weight(jnp.array(s), config)) for s in (1, 2, 3, 5, 9)]
  np.testing.assert_allclose(weights, [0.0, 0.25, 0.5, 1.0, 1.0])


def test_total_losses_compose_with_the_right_signs():
  """L_D and L_G rebuilt from the critics' outputs, computed here independently."""
  config, models, state, batch = _smoke_setup(cls_start_step=0)
  step = jnp.array(0)
  real, label = batch["image"], batch["label"]
  l_d, dm = train_synthesis.critic_loss(state.d_params, state.g_params, batch, KEY, step,
                                        config, models)
  k_gen, k_gp, _ = jax.random.split(KEY, 3)
  requested = _requested(batch)
  out = inpaint.inpaint(config, models, state.g_params, batch, k_gen, requested)
  critics = train_synthesis.critic_fns(config, models, state.d_params, out["box"])
  ce = lambda logits, cls: float(jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
      logits, jnp.asarray(cls))))
  expected_d = 0.0
  for i, (name, critic) in enumerate(critics.items()):
    (d_real, aux_real), (d_fake, aux_fake) = critic(real, label), critic(out["fake"], requested)
    gp = losses.gradient_penalty(lambda x: critic(x, label)[0], real, out["fake"],
                                 jax.random.fold_in(k_gp, i))
    # the critic minimises E[D(fake)] - E[D(real)]: it pushes real up and fake down
    expected_d += (float(jnp.mean(d_fake) - jnp.mean(d_real)) + 10.0 * float(gp)
                   + 1.0 * (ce(aux_real, [1, 2, 1, 2]) + ce(aux_fake, [0, 0, 0, 0])))
  np.testing.assert_allclose(l_d, expected_d, rtol=1e-5)

  config.loss.lambda_hole_moments = 7.0
  config.loss.lambda_hole_histogram = 5.0
  config.loss.lambda_hole_sized = 3.0
  config.loss.size_target_other_class = 0.5
  table = np.asarray([[0, 6.0, -0.5, 0.1, 0.0], [1, 12.0, -0.2, 0.4, 0.3],
                      [1, 30.0, 0.0, 0.6, 0.5]], np.float32)
  quantiles = np.asarray([[0, 6.0, -0.9, -0.8, -0.5, 0.0], [1, 12.0, -0.8, -0.3, 0.2, 0.6],
                          [1, 30.0, -0.7, 0.0, 0.5, 0.9]], np.float32)
  stats = train_synthesis.ClassStats(moments=table, quantiles=quantiles)
  l_g, gm = train_synthesis.generator_loss(state.g_params, state.d_params, batch, KEY, step,
                                           config, models, stats)
  requested = _requested(batch, n_splits=2)
  assert requested.tolist() == [1, 1, 1, 1]          # samples 0 and 2 ask for the other class
  out = inpaint.inpaint(config, models, state.g_params, batch, jax.random.split(KEY)[0], requested)
  critics = train_synthesis.critic_fns(config, models, state.d_params, out["box"])
  hole, expected_g = np.asarray(out["mask"]), 0.0
  for k in ("x1", "x2"):                             # L1 by hand, per sample
    err = np.abs(np.asarray(out[k]) - np.asarray(real))
    for b, factual in enumerate(np.asarray(requested == label)):
      inside = np.sum(err[b] * hole[b]) / np.sum(hole[b])
      expected_g += 1000.0 / 4 * (inside + np.mean(err[b]) if factual
                                  else np.mean(err[b] * (1 - hole[b])))
  for critic in critics.values():
    d_fake, aux_fake = critic(out["fake"], requested)
    # the generator maximises E[D(fake)] and asks the aux head for the requested class
    expected_g += -float(jnp.mean(d_fake)) + 10.0 * ce(aux_fake, np.asarray(requested) + 1)
  # all four ask for malignant: their mean hole moments against the real malignant ones (1, 3)
  moments = lambda x: np.asarray(losses.hole_moments(x, out["mask"]))
  gap = moments(out["fake"]).mean(0) - moments(real)[[1, 3]].mean(0)
  np.testing.assert_allclose(gm["generator/hole_moments"], np.sum(gap ** 2), rtol=1e-5)
  expected_g += 7.0 * np.sum(gap ** 2)
  # the factual samples (1, 3): their hole's sorted values against the real ones'
  fake_np = np.asarray(out["fake"])
  w1 = [np.mean(np.abs(np.sort(fake_np[b][hole[b] > 0]) - np.sort(np.asarray(real)[b][hole[b] > 0])))
        for b in (1, 3)]
  # the counterfactual ones (0, 2), whose own size sized their hole: against the size-matched
  # quantiles of the malignant rows, the benign one counting half
  target_q = losses.size_matched_moments(jnp.asarray(quantiles), requested, batch["diameter_mm"],
                                         other_class=0.5)
  assert not np.allclose(target_q, losses.size_matched_moments(
      jnp.asarray(quantiles), requested, batch["diameter_mm"]), atol=1e-3)
  by_class = losses.hole_quantile_distance(losses.sorted_in_hole(out["fake"], out["mask"]),
                                           target_q, jnp.asarray([1.0, 0.0, 1.0, 0.0]))
  np.testing.assert_allclose(gm["generator/hole_histogram_class"], by_class, rtol=1e-5)
  np.testing.assert_allclose(gm["generator/hole_histogram"], np.mean(w1) + by_class, rtol=1e-5)
  expected_g += 5.0 * (np.mean(w1) + float(by_class))
  # every request kept its own size, so sized its hole: each against the malignant rows,
  # the benign one counting half
  target = losses.size_matched_moments(jnp.asarray(table), requested, batch["diameter_mm"],
                                       other_class=0.5)
  assert not np.allclose(target, losses.size_matched_moments(
      jnp.asarray(table), requested, batch["diameter_mm"]), atol=1e-3)
  sized = np.mean(np.sum((moments(out["fake"]) - np.asarray(target)) ** 2, -1))
  np.testing.assert_allclose(gm["generator/hole_sized"], sized, rtol=1e-5)
  expected_g += 3.0 * sized
  np.testing.assert_allclose(l_g, expected_g, rtol=1e-5)


def test_a_gan_training_step_is_the_same_with_each_conv():
  """Both GAN steps (critic with its double-backward penalty, generator) through XLA's conv,
  the patch matmul and oneDNN: same losses and updated parameters, float rounding aside."""
  from nodule_jax.models import layers
  config, models, _, batch = _smoke_setup(cls_start_step=0)
  tx = optax.sgd(1.0)   # parameter change = -gradient
  state = train_synthesis.init_state(jax.random.PRNGKey(0), config, models, tx, tx, 2)
  results = []
  for impl in ("xla", "matmul", "onednn"):
    with layers.conv_impl(impl):
      s, d_metrics = jax.jit(lambda s, b: train_synthesis.critic_step(
          s, b, config=config, models=models, tx_d=tx))(state, batch)
      s, g_metrics = jax.jit(lambda s, b: train_synthesis.generator_step(
          s, b, config=config, models=models, tx_g=tx))(s, batch)
    results.append((s, {**d_metrics, **g_metrics}))
  (s_xla, m_xla), *others = results
  before = jax.tree.leaves((state.g_params, state.d_params))
  flat = lambda s: np.concatenate([np.ravel(a - p0) for p0, a in zip(
      before, jax.tree.leaves((s.g_params, s.d_params)))])
  for (s_other, m_other), atol in zip(others, (1e-3, 5e-2)):
    for key in ("critic/loss", "critic/gp_global", "generator/loss", "generator/recon_g2"):
      np.testing.assert_allclose(m_other[key], m_xla[key], rtol=1e-4, err_msg=key)
    for p0, a, b in zip(before, jax.tree.leaves((s_other.g_params, s_other.d_params)),
                        jax.tree.leaves((s_xla.g_params, s_xla.d_params))):
      scale = float(np.max(np.abs(b - p0))) + 1e-12
      np.testing.assert_allclose((a - p0) / scale, (b - p0) / scale, atol=atol)
    a, b = flat(s_other), flat(s_xla)
    assert np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) > 0.9999
  # oneDNN's tolerance is wider: its rounding differs from XLA's (which the patch matmul
  # shares), and on this batch one of the global critic's 65 536 LayerNorm outputs lies
  # within 1e-6 of the leaky ReLU's kink; its slope flips, moving Conv_1's update by 2%
  # (XLA's backward on oneDNN's forward values alone does the same).


def test_generator_steps_keep_a_moving_average_of_the_weights_by_hand():
  """g_average = d_t·g_average + (1 - d_t)·g_params after each step, d_t = min(ema_decay,
  (1+t)/(10+t)); ema_decay 0 keeps the average equal to the weights."""
  assert float(train_synthesis.average_decay(jnp.array(0), 0.99)) == pytest.approx(0.1)
  assert float(train_synthesis.average_decay(jnp.array(5), 0.99)) == pytest.approx(6 / 15)
  assert float(train_synthesis.average_decay(jnp.array(10_000), 0.99)) == pytest.approx(0.99)
  assert float(train_synthesis.average_decay(jnp.array(10_000), 0.0)) == 0.0
  config, models, _, batch = _smoke_setup(cls_start_step=0)
  tx = optax.sgd(1.0)
  state = train_synthesis.init_state(jax.random.PRNGKey(0), config, models, tx, tx, 2)
  for decay in (0.99, 0.0):
    config.ema_decay = decay
    step = jax.jit(lambda s, b: train_synthesis.generator_step(
        s, b, config=config, models=models, tx_g=tx)[0])
    s1 = step(state, batch)
    s2 = step(s1, batch)
    d0, d1 = min(decay, 1 / 10), min(decay, 2 / 11)
    for p0, p1, p2, a2 in zip(*(jax.tree.leaves(t) for t in (
        state.g_params, s1.g_params, s2.g_params, s2.g_average))):
      expected = d1 * (d0 * p0 + (1 - d0) * p1) + (1 - d1) * p2
      np.testing.assert_allclose(a2, expected, rtol=1e-5, atol=1e-7)
    moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
        jax.tree.leaves(s2.g_average), jax.tree.leaves(s2.g_params)))
    assert (moved > 1e-6) == (decay > 0)


def test_generator_loss_counts_an_oversized_requests_dense_voxels_against_its_size():
  """Counterfactual requests drawn at 3 mm into the 6-12 mm nodules' holes: L_hole holds
  their dense-voxel shares to the class's times 3 mm hole / hole, and not their mean."""
  config, models, state, batch = _smoke_setup(cls_start_step=0)
  config.loss.lambda_hole_moments = 1.0
  config.loss.counterfactual_diameter = "class"   # "covering" would raise them to 6-12 mm
  stats = train_synthesis.ClassStats(diameters=np.full((2, 2), 3.0, np.float32))
  _, gm = train_synthesis.generator_loss(state.g_params, state.d_params, batch, KEY, jnp.array(0),
                                         config, models, stats)
  label = batch["label"]
  requested = _requested(batch, n_splits=2)
  diameter = jnp.where(requested == label, batch["diameter_mm"], 3.0)
  out = inpaint.inpaint(config, models, state.g_params, batch, jax.random.split(KEY)[0],
                        requested, diameter)
  hole = np.asarray(out["mask"])
  fake = np.asarray(losses.hole_moments(out["fake"], out["mask"]))
  own = np.asarray(losses.hole_moments(batch["image"], inpaint.inpaint_hole(
      config, batch, jax.random.split(KEY)[0]).mask))
  small = np.asarray(requested != label)
  assert small.any() and not small.all()
  radius = (3.0 / 2 + config.mask.margin_mm) * (1 + config.mask.jitter / 2)
  sphere = float(np.sum(sphere_mask((32, 64, 64), jnp.asarray([radius]))))
  fraction = np.where(small, np.minimum(sphere / hole.sum((1, 2, 3, 4)), 1.0), 1.0)
  assert np.all(fraction[small] < 0.5)
  expected = 0.0
  for c in (0, 1):
    fakes, reals = np.asarray(requested) == c, np.asarray(label) == c
    if not fakes.any():
      continue
    mean_fakes = fakes & ~small
    gap = [fake[mean_fakes, 0].mean() - own[reals, 0].mean() if mean_fakes.any() else 0.0]
    gap += [np.mean(fake[fakes, k] - own[reals, k].mean() * fraction[fakes]) for k in (1, 2)]
    expected += np.sum(np.square(gap))
  np.testing.assert_allclose(gm["generator/hole_moments"], expected, rtol=1e-4)


def test_generator_loss_adds_each_holes_roughness_above_the_real_nodules():
  """Real patches without texture (a constant): every fake hole rougher than them pays its
  whole finest-scale energy, weighted by λ_rough; nothing else in L_G moves."""
  config, models, state, batch = _smoke_setup(cls_start_step=0)
  batch = dict(batch, image=jnp.full_like(batch["image"], -0.5))
  step = jnp.array(0)
  losses_at = {}
  for weight in (0.0, 2.0):
    config.loss.lambda_roughness = weight
    losses_at[weight] = train_synthesis.generator_loss(state.g_params, state.d_params, batch,
                                                       KEY, step, config, models)
  requested = _requested(batch, n_splits=2)
  out = inpaint.inpaint(config, models, state.g_params, batch, jax.random.split(KEY)[0],
                        requested)
  excess = float(np.mean(np.asarray(losses.roughness(out["fake"], out["mask"]))))
  assert excess > 0
  np.testing.assert_allclose(losses_at[2.0][1]["generator/roughness"], excess, rtol=1e-5)
  # the totals are ~10^4 times larger, so float32 rounds their difference at ~10^-4
  np.testing.assert_allclose(losses_at[2.0][0] - losses_at[0.0][0], 2.0 * excess, atol=3e-4)


def test_counterfactual_requests_draw_sizes_of_the_requested_class():
  sizes = jnp.array([[5.0, 6.0, 7.0], [18.0, 19.0, 20.0]])
  label = jnp.array([0, 1] * 500)
  requested = jnp.where(jnp.arange(1000) % 4 < 2, label, 1 - label)  # half counterfactual
  diameter = jnp.full(label.shape, 10.0)
  key = jax.random.PRNGKey(0)
  got = np.asarray(train_synthesis.requested_diameters(key, diameter, label, requested, sizes))
  factual = np.asarray(requested == label)
  assert np.all(got[factual] == 10.0)
  for cls in (0, 1):
    drawn = got[~factual & (np.asarray(requested) == cls)]
    assert set(drawn.tolist()) == set(np.asarray(sizes[cls]).tolist())  # every size, no other
  np.testing.assert_array_equal(
      train_synthesis.requested_diameters(key, diameter, label, requested, None), diameter)
  covering = np.asarray(train_synthesis.requested_diameters(key, diameter, label, requested,
                                                            sizes, covering=True))
  assert np.all(covering[factual] == 10.0)
  np.testing.assert_array_equal(covering[~factual], np.maximum(got[~factual], 10.0))
  assert set(covering[~factual & (np.asarray(requested) == 0)].tolist()) == {10.0}  # benign: 5-7



def test_inpaint_hole_is_the_hole_inpaint_makes_with_the_same_key():
  config, models, state, batch = _smoke_setup()
  for diameter in (None, jnp.array([20.0, 4.0, 8.0, 30.0])):
    out = inpaint.inpaint(config, models, state.g_params, batch, KEY, None, diameter)
    np.testing.assert_array_equal(inpaint.inpaint_hole(config, batch, KEY, diameter).mask,
                                  out["mask"])
