"""The texture and calcification ratings: in the shards, in the batches, as generator
channels, drawn for requests by class and size, and matched in the size-matched targets."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

from configs.synthesis import get_config
from nodule_jax import gan_requests, inpaint, input_pipeline, losses, nodule_ratings, train_synthesis
from nodule_jax.masks import generator_inputs, sphere_mask

# label, diameter, texture, calcification
TABLE = np.asarray([[0, 6.0, 5, 6], [0, 8.0, 1, 6], [0, 20.0, 5, 3], [1, 8.0, 4.5, 6],
                    [1, 20.0, 2, 6]], np.float32)


def test_rating_channels_by_hand():
  ratings = jnp.asarray([[1.0, 6.0], [5.0, 3.0], [3.5, 5.5]])
  got = nodule_ratings.rating_channels(ratings, ("texture", "calcification"))
  np.testing.assert_allclose(got, [[-1, -1], [1, 1], [0.25, 1]])
  np.testing.assert_allclose(nodule_ratings.rating_channels(ratings, ("calcification",)),
                             [[-1], [1], [1]])
  assert nodule_ratings.rating_channels(ratings, ()).shape == (3, 0)
  with pytest.raises(ValueError, match="unknown.*spiculation"):
    nodule_ratings.check_names(("texture", "spiculation"))


def test_rating_maps_follow_the_other_channels():
  image = jnp.zeros((2, 4, 4, 4, 1))
  mask = jnp.zeros_like(image).at[:, 1:3, 1:3, 1:3].set(1.0)
  ratings = jnp.asarray([[-1.0, 0.5], [1.0, -1.0]])
  _, inputs = generator_inputs(image, mask, jnp.array([0, 1]), jax.random.PRNGKey(0),
                               jnp.array([8.0, 16.0]), ratings)
  assert inputs.shape == (2, 4, 4, 4, 6)
  for b in range(2):
    for c in range(2):   # constant over the whole patch, like the diameter map
      np.testing.assert_array_equal(inputs[b, ..., 4 + c], ratings[b, c])


def test_draw_ratings_follow_the_class_and_size_weights():
  """Each request gets a nodule of its own class, in proportion to the Gaussian weight of
  its diameter; far from every nodule, the nearest."""
  n = 20000
  label, diameter = jnp.zeros(n, jnp.int32), jnp.full(n, 7.0)
  drawn = np.asarray(nodule_ratings.draw_ratings(jax.random.PRNGKey(0), TABLE, label, diameter))
  # benign nodules at 6, 8 and 20 mm; the 6 and 8 mm ones equally close to 7 mm
  weights = np.exp(-0.5 * (np.array([6.0, 8.0, 20.0]) - 7.0) ** 2 / 4.0)
  share = lambda row: np.mean(np.all(drawn == TABLE[row, 2:], -1))
  np.testing.assert_allclose([share(0), share(1), share(2)], weights / weights.sum(), atol=0.01)
  malignant = nodule_ratings.draw_ratings(jax.random.PRNGKey(1), TABLE, jnp.ones(4, jnp.int32),
                                          jnp.asarray([8.0, 20.0, 3.0, 200.0]))
  np.testing.assert_array_equal(malignant, TABLE[[3, 4, 3, 4], 2:])


def test_rating_logits_and_a_rating_matched_target_by_hand():
  ratings = jnp.asarray([[5.0, 6.0]])
  logits = nodule_ratings.rating_logits(TABLE, ratings, ("texture",))
  gap = (TABLE[:, 2] - 5.0) / 2.0
  np.testing.assert_allclose(logits[0], -0.5 * (gap / nodule_ratings.RATING_WIDTH) ** 2,
                             rtol=1e-6)
  # one statistic per nodule: the benign 6 and 8 mm ones at 7 mm weigh the same by size;
  # matching the solid texture leaves the 8 mm ground-glass one e^-32 of the 6 mm one
  table = np.concatenate([TABLE[:, :2], np.arange(5, dtype=np.float32)[:, None]], -1)
  by_size = losses.size_matched_moments(jnp.asarray(table), jnp.array([0]), jnp.array([7.0]))
  matched = losses.size_matched_moments(jnp.asarray(table), jnp.array([0]), jnp.array([7.0]),
                                        extra_logits=logits)
  weights = np.exp(-0.5 * (np.array([6.0, 8.0, 20.0]) - 7.0) ** 2 / 4.0)
  np.testing.assert_allclose(by_size[0, 0], weights @ [0, 1, 2] / weights.sum(), rtol=1e-5)
  w = weights * np.exp(np.asarray(logits[0, :3]))
  np.testing.assert_allclose(matched[0, 0], w @ [0, 1, 2] / w.sum(), rtol=1e-5)
  assert matched[0, 0] < 0.05


def test_shards_and_batches_hold_the_median_ratings(built):
  """The input pipeline's ratings are the medians of each example's annotators' (the
  shards hold every annotator's), and the nodule table lists them in shard order."""
  data_dir, _ = built
  raw = list(tfds.as_numpy(input_pipeline.load_split(data_dir, "train", whole=True)))
  batch = next(iter(tfds.as_numpy(input_pipeline.eval_batches(data_dir, "train", 64,
                                                               whole=True))))
  expected = [[np.median(ex["texture"]), np.median(ex["calcification"])] for ex in raw]
  np.testing.assert_array_equal(batch["ratings"], expected)
  assert all(len(ex["texture"]) == ex["n_annotators"] for ex in raw)
  table = nodule_ratings.nodule_table(data_dir, 30.0)
  keep = [ex["diameter_mm"] <= 30.0 for ex in raw]
  np.testing.assert_array_equal(table[:, 2:], np.asarray(expected)[keep])
  np.testing.assert_array_equal(table[:, 0], [ex["label"] for ex, k in zip(raw, keep) if k])


def _conditioned_setup():
  config = get_config("smoke")
  config.model.ratings = "texture, calcification"
  config.loss.counterfactual_diameter = "same"
  models = inpaint.build_models(config)
  state = train_synthesis.init_state(jax.random.PRNGKey(0), config, models, optax.adam(1e-3),
                                     optax.adam(1e-3), batch_size=2)
  rng = np.random.default_rng(0)
  diameter = jnp.array([6.0, 8.0, 8.0, 20.0])
  batch = {"image": jnp.asarray(rng.uniform(-1, 1, (4, 32, 64, 64, 1)), jnp.float32),
           "mask": sphere_mask((32, 64, 64), diameter / 2, jnp.zeros((4, 3))),
           "label": jnp.array([0, 1, 0, 1]), "diameter_mm": diameter,
           "ratings": jnp.asarray(TABLE[[0, 3, 1, 4], 2:])}
  return config, models, state, batch


def test_a_conditioned_generator_reads_the_ratings():
  config, models, state, batch = _conditioned_setup()
  out = lambda ratings=None: np.asarray(inpaint.inpaint(
      config, models, state.g_params, batch, jax.random.PRNGKey(1), ratings=ratings)["x2"])
  np.testing.assert_array_equal(out(), out(batch["ratings"]))
  assert np.abs(out() - out(batch["ratings"][::-1])).max() > 1e-4
  del batch["ratings"]
  with pytest.raises(KeyError, match="ratings"):
    out()


def test_requests_keep_their_own_ratings_or_draw_the_requested_class():
  """Factual requests keep their nodule's ratings; counterfactual ones draw a training
  nodule's of the requested class; the steps train on them."""
  config, models, state, batch = _conditioned_setup()
  stats = gan_requests.ClassStats(nodules=TABLE)
  found = {True: 0, False: 0}
  for seed in range(8):
    req = gan_requests.draw_requests(jax.random.PRNGKey(seed), batch, config, stats)
    for b in range(4):
      factual = int(req.label[b]) == int(batch["label"][b])
      found[factual] += 1
      if factual:
        np.testing.assert_array_equal(req.ratings[b], batch["ratings"][b])
      else:
        rows = TABLE[TABLE[:, 0] == int(req.label[b]), 2:]
        assert any(np.array_equal(req.ratings[b], r) for r in rows)
  assert found[True] and found[False]
  assert gan_requests.draw_requests(jax.random.PRNGKey(0), batch, get_config("smoke"),
                                    stats).ratings is None
  loss, metrics = train_synthesis.generator_loss(state.g_params, state.d_params, batch,
                                                 jax.random.PRNGKey(0), jnp.array(0), config,
                                                 models, stats)
  assert np.isfinite(float(loss))


def test_an_inpainting_keys_draws_each_have_their_own_key():
  """Hole, noise, the second noise and the ratings draw from four different keys; a split
  of the key repeats a fold of it (partitionable threefry), so every use is a fold."""
  from nodule_jax.rng import InpaintKey, inpaint_key
  key = jax.random.PRNGKey(5)
  keys = {tuple(np.asarray(inpaint_key(key, use)).ravel()) for use in InpaintKey}
  assert len(keys) == len(InpaintKey) == 4
  np.testing.assert_array_equal(jax.random.split(key)[1], inpaint_key(key, InpaintKey.NOISE))
