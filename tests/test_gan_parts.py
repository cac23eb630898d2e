"""Losses and training steps of the in-painting GAN, rebuilt by hand."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.synthesis import get_config
from nodule_jax import gan_requests, inpaint, losses, train_synthesis
from nodule_jax.masks import sphere_mask


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
  return gan_requests.requested_labels(jax.random.split(key, n_splits)[-1], batch["label"],
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
  np.testing.assert_array_equal(gan_requests.requested_labels(key, label, 0.0), label)
  np.testing.assert_array_equal(gan_requests.requested_labels(key, label, 1.0), 1 - label)
  flipped = np.mean(np.asarray(gan_requests.requested_labels(key, label, 0.3) != label))
  assert 0.27 < flipped < 0.33


def test_requested_labels_flip_each_class_its_own_share():
  label = jnp.asarray(np.random.default_rng(0).integers(0, 2, 4000))
  key = jax.random.PRNGKey(0)
  benign, malignant = np.asarray(label) == 0, np.asarray(label) == 1
  only_malignant = np.asarray(gan_requests.requested_labels(key, label, (0.0, 1.0)))
  assert (only_malignant == 0).all()             # benign kept, every malignant one flipped
  flipped = np.asarray(gan_requests.requested_labels(key, label, (0.6, 0.1))) != label
  assert 0.56 < flipped[benign].mean() < 0.64 and 0.07 < flipped[malignant].mean() < 0.13
  np.testing.assert_array_equal(   # a pair of equal shares draws exactly as the one share
      gan_requests.requested_labels(key, label, (0.3, 0.3)),
      gan_requests.requested_labels(key, label, 0.3))


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
  config.loss.histogram_core_weight = 2.0
  table = np.asarray([[0, 6.0, -0.5, 0.1, 0.0], [1, 12.0, -0.2, 0.4, 0.3],
                      [1, 30.0, 0.0, 0.6, 0.5]], np.float32)
  quantiles = np.asarray([[0, 6.0, -0.9, -0.8, -0.5, 0.0], [1, 12.0, -0.8, -0.3, 0.2, 0.6],
                          [1, 30.0, -0.7, 0.0, 0.5, 0.9]], np.float32)
  stats = gan_requests.ClassStats(moments=table, quantiles=quantiles)
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
  # the factual samples (1, 3): their hole's sorted values against the real ones', the
  # densest fifth counting three times
  fake_np = np.asarray(out["fake"])
  core_weights = lambda n: 1.0 + 2.0 * ((np.arange(n) + 0.5) / n >= 0.8)
  w1 = [np.mean(core_weights(int(hole[b].sum()))
                * np.abs(np.sort(fake_np[b][hole[b] > 0]) - np.sort(np.asarray(real)[b][hole[b] > 0])))
        for b in (1, 3)]
  # the counterfactual ones (0, 2), whose own size sized their hole: against the size-matched
  # quantiles of the malignant rows, the benign one counting half
  target_q = losses.size_matched_moments(jnp.asarray(quantiles), requested, batch["diameter_mm"],
                                         other_class=0.5)
  assert not np.allclose(target_q, losses.size_matched_moments(
      jnp.asarray(quantiles), requested, batch["diameter_mm"]), atol=1e-3)
  by_class = losses.hole_quantile_distance(losses.sorted_in_hole(out["fake"], out["mask"]),
                                           target_q, jnp.asarray([1.0, 0.0, 1.0, 0.0]), 2.0)
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
  for (s_other, m_other), atol in zip(others, (5e-3, 5e-2)):
    for key in ("critic/loss", "critic/gp_global", "generator/loss", "generator/recon_g2"):
      np.testing.assert_allclose(m_other[key], m_xla[key], rtol=1e-4, err_msg=key)
    for p0, a, b in zip(before, jax.tree.leaves((s_other.g_params, s_other.d_params)),
                        jax.tree.leaves((s_xla.g_params, s_xla.d_params))):
      scale = float(np.max(np.abs(b - p0))) + 1e-12
      np.testing.assert_allclose((a - p0) / scale, (b - p0) / scale, atol=atol)
    a, b = flat(s_other), flat(s_xla)
    assert np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) > 0.9999
  # oneDNN's tolerance is wider: its rounding differs from XLA's (which the patch matmul
  # shares on AVX-512 CPUs), and on this batch one of the global critic's 65 536 LayerNorm
  # outputs lies within 1e-6 of the leaky ReLU's kink; its slope flips, moving Conv_1's
  # update by 2% (XLA's backward on oneDNN's forward values alone does the same). The step
  # is that sensitive whatever the conv: under XLA alone, scaling the batch by
  # 1 + 1e-6·noise moves that update by 1.1%; on an AVX2 CPU (no AVX-512) the patch
  # matmul's rounding moves the local critic's Conv_0 update by 0.2% of its largest entry,
  # hence 5e-3 for it.


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
  stats = gan_requests.ClassStats(diameters=np.full((2, 2), 3.0, np.float32))
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
  fraction = np.where(small, _requested_share(config, 3.0, hole), 1.0)
  assert np.all(fraction[small] < 0.5)
  np.testing.assert_allclose(gm["generator/hole_moments"],
                             _class_moment_gap(fake, own, requested, label, fraction), rtol=1e-4)


def _requested_share(config, diameter, hole):
  """[B] the share of each hole [B, D, H, W, 1] the sphere of `diameter` mm fills (at most 1)."""
  radius = (np.asarray(diameter) / 2 + config.mask.margin_mm) * (1 + config.mask.jitter / 2)
  sphere = np.asarray(jnp.sum(sphere_mask(hole.shape[1:4], jnp.broadcast_to(
      jnp.asarray(radius, jnp.float32), hole.shape[:1])), (1, 2, 3, 4)))
  return np.minimum(sphere / hole.sum((1, 2, 3, 4)), 1.0)


def _class_moment_gap(fake, own, requested, label, fraction):
  """L_hole by hand: per requested class, the fakes' mean hole statistics [B, 3] against
  the real nodules' in their own holes, the dense-voxel shares scaled by `fraction` [B] and
  the mean left out where the fraction is below 1."""
  expected = 0.0
  for c in (0, 1):
    fakes, reals = np.asarray(requested) == c, np.asarray(label) == c
    if not fakes.any():
      continue
    mean_fakes = fakes & (fraction >= 1)
    gap = [fake[mean_fakes, 0].mean() - own[reals, 0].mean() if mean_fakes.any() else 0.0]
    gap += [np.mean(fake[fakes, k] - own[reals, k].mean() * fraction[fakes]) for k in (1, 2)]
    expected += np.sum(np.square(gap))
  return expected


def test_oversized_holes_take_a_larger_batch_nodules_size_for_the_asked_share():
  rng = np.random.default_rng(0)
  diameter = jnp.asarray(rng.uniform(4, 22, 4000), jnp.float32)
  factual = jnp.asarray(rng.random(4000) < 0.5)
  key = jax.random.PRNGKey(1)
  got = np.asarray(gan_requests.oversized_hole_diameters(key, diameter, factual, 0.5))
  own, factual = np.asarray(diameter), np.asarray(factual)
  assert np.all(got >= own) and np.all(got[~factual] == own[~factual])
  assert set(got[got > own].tolist()) <= set(own.tolist())   # another nodule's size
  # half the factual samples draw a partner, who is larger about half the time
  assert 0.2 < np.mean(got[factual] > own[factual]) < 0.3
  everyone = np.asarray(gan_requests.oversized_hole_diameters(key, diameter, factual > -1, 1.0))
  assert 0.45 < np.mean(everyone > own) < 0.55
  np.testing.assert_array_equal(
      gan_requests.oversized_hole_diameters(key, diameter, factual, 0.0), own)


def test_generator_loss_holds_a_nodule_in_an_oversized_hole_to_its_own_sizes_dense_voxels():
  """Every sample asked for its own class, its hole drawn for another batch nodule's size
  when larger: the hole is that size's, the size channel its own, and L_hole holds the
  dense-voxel shares of those holes to the class's times own-size hole / hole."""
  config, models, state, batch = _smoke_setup(cls_start_step=0)
  config.loss.lambda_hole_moments = 1.0
  config.loss.counterfactual = (0.0, 0.0)
  config.mask.oversized = 1.0
  _, gm = train_synthesis.generator_loss(state.g_params, state.d_params, batch, KEY, jnp.array(0),
                                         config, models)
  label, k_gen, k_request = batch["label"], *jax.random.split(KEY)
  hole_diameter = gan_requests.oversized_hole_diameters(
      jax.random.fold_in(k_request, 2), batch["diameter_mm"], label == label, 1.0)
  grown = np.asarray(hole_diameter > batch["diameter_mm"])
  assert grown.any() and not grown.all()
  out = inpaint.inpaint(config, models, state.g_params, batch, k_gen, None, None, hole_diameter)
  hole = np.asarray(out["mask"])
  np.testing.assert_array_equal(
      hole, inpaint.inpaint_hole(config, batch, k_gen, hole_diameter).mask)
  own_hole = inpaint.inpaint_hole(config, batch, k_gen).mask
  assert np.all(hole.sum((1, 2, 3, 4))[grown] > np.asarray(own_hole).sum((1, 2, 3, 4))[grown])
  fake = np.asarray(losses.hole_moments(out["fake"], out["mask"]))
  own = np.asarray(losses.hole_moments(batch["image"], own_hole))
  fraction = np.where(grown, _requested_share(config, batch["diameter_mm"], hole), 1.0)
  assert np.all(fraction[grown] < 0.9)
  np.testing.assert_allclose(gm["generator/hole_moments"],
                             _class_moment_gap(fake, own, label, label, fraction), rtol=1e-4)


def _generator_loss_at(config, models, state, batch, key, weights):
  """{weight: generator_loss(...) at step 0} with `config.loss[key]` set to each weight."""
  losses_at = {}
  for weight in weights:
    config.loss[key] = weight
    losses_at[weight] = train_synthesis.generator_loss(state.g_params, state.d_params, batch,
                                                       KEY, jnp.array(0), config, models)
  return losses_at


def test_generator_loss_adds_each_holes_roughness_above_the_real_nodules():
  """Real patches without texture (a constant): every fake hole rougher than them pays its
  whole finest-scale energy, weighted by λ_rough; nothing else in L_G moves."""
  config, models, state, batch = _smoke_setup(cls_start_step=0)
  batch = dict(batch, image=jnp.full_like(batch["image"], -0.5))
  losses_at = _generator_loss_at(config, models, state, batch, "lambda_roughness", (0.0, 2.0))
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
  got = np.asarray(gan_requests.requested_diameters(key, diameter, label, requested, sizes))
  factual = np.asarray(requested == label)
  assert np.all(got[factual] == 10.0)
  for cls in (0, 1):
    drawn = got[~factual & (np.asarray(requested) == cls)]
    assert set(drawn.tolist()) == set(np.asarray(sizes[cls]).tolist())  # every size, no other
  np.testing.assert_array_equal(
      gan_requests.requested_diameters(key, diameter, label, requested, None), diameter)
  covering = np.asarray(gan_requests.requested_diameters(key, diameter, label, requested,
                                                            sizes, covering=True))
  assert np.all(covering[factual] == 10.0)
  np.testing.assert_array_equal(covering[~factual], np.maximum(got[~factual], 10.0))
  assert set(covering[~factual & (np.asarray(requested) == 0)].tolist()) == {10.0}  # benign: 5-7
  mixed = np.asarray(gan_requests.requested_diameters(key, diameter, label, requested, sizes,
                                                         covering=True, own_share=0.25))
  assert np.all(mixed[factual] == 10.0)
  malignant = ~factual & (np.asarray(requested) == 1)     # drawn 18-20 mm, or their own 10
  own = mixed[malignant] == 10.0
  assert np.all(np.isin(mixed[malignant][~own], [18.0, 19.0, 20.0]))
  assert 0.18 < own.mean() < 0.32                         # 250 requests, a share of 0.25
  np.testing.assert_array_equal(mixed[malignant][~own], covering[malignant][~own])



def test_inpaint_hole_is_the_hole_inpaint_makes_with_the_same_key():
  config, models, state, batch = _smoke_setup()
  for diameter in (None, jnp.array([20.0, 4.0, 8.0, 30.0])):
    out = inpaint.inpaint(config, models, state.g_params, batch, KEY, None, diameter)
    np.testing.assert_array_equal(inpaint.inpaint_hole(config, batch, KEY, diameter).mask,
                                  out["mask"])


def test_generator_loss_adds_mode_seeking_between_two_noises_of_one_request():
  """λ_ms > 0: the batch in-painted again with the same requests and holes but other noise;
  L_ms from the two passes, weighted into L_G; 0 leaves L_G as it was."""
  config, models, state, batch = _smoke_setup(cls_start_step=0)
  losses_at = _generator_loss_at(config, models, state, batch, "lambda_mode_seeking",
                                 (0.0, 0.5))
  assert "generator/mode_seeking" not in losses_at[0.0][1]
  k_gen = jax.random.split(KEY)[0]
  requested = _requested(batch, n_splits=2)
  one = inpaint.inpaint(config, models, state.g_params, batch, k_gen, requested)
  two = inpaint.inpaint(config, models, state.g_params, batch, k_gen, requested,
                        noise_rng=inpaint.other_noise(k_gen))
  np.testing.assert_array_equal(one["mask"], two["mask"])
  hole = np.asarray(one["mask"]) > 0
  assert np.all(np.asarray(one["masked"])[~hole] == np.asarray(two["masked"])[~hole])
  assert np.mean(np.asarray(one["masked"])[hole] != np.asarray(two["masked"])[hole]) > 0.99
  expected = float(losses.mode_seeking(one["fake"], two["fake"], one["masked"], two["masked"],
                                       one["mask"]))
  np.testing.assert_allclose(losses_at[0.5][1]["generator/mode_seeking"], expected, rtol=1e-4)
  np.testing.assert_allclose(losses_at[0.5][0] - losses_at[0.0][0], 0.5 * expected,
                             rtol=1e-3, atol=3e-4)
