"""The hole-intensity losses by hand and against scipy: moments, their class and size-matched
targets (oversized holes in the requested size's terms), the 1D Wasserstein distances."""
import jax
import jax.numpy as jnp
import numpy as np

from configs.synthesis import get_config
from nodule_jax import inpaint, losses


def test_hole_moments_and_class_matching_by_hand():
  hole = np.zeros((2, 2, 2, 2, 1), np.float32)
  hole[:, 0] = 1                                  # 4 hole voxels per sample
  x = np.full((2, 2, 2, 2, 1), -1.0, np.float32)  # -1000 HU outside
  x[0, 0, 0] = 1.0                                # sample 0: 2 voxels at +400 HU ...
  x[0, 0, 1] = -1.0                               # ... and 2 at -1000 HU
  x[1, 0] = 0.0                                   # sample 1: all -300 HU
  m = np.asarray(losses.hole_moments(jnp.asarray(x), jnp.asarray(hole), softness_hu=1e-3))
  np.testing.assert_allclose(m[0], [0.0, 0.5, 0.5], atol=1e-6)
  np.testing.assert_allclose(m[1], [0.0, 1.0, 0.0], atol=1e-6)   # above -400, not above -100
  fake = jnp.asarray([[1.0, 0.0], [3.0, 1.0], [5.0, 5.0]])
  real = jnp.asarray([[0.0, 0.0], [2.0, 2.0], [9.0, 9.0]])
  # class 0: fakes 0, 1 (mean [2, .5]) vs real 0, 1 (mean [1, 1]); class 1: fake 2 vs real 2
  got = losses.class_moment_matching(fake, jnp.asarray([0, 0, 1]), real, jnp.asarray([0, 0, 1]))
  np.testing.assert_allclose(got, (1 + 0.25) + (16 + 16), rtol=1e-6)
  # a class no real sample has adds nothing
  got = losses.class_moment_matching(fake, jnp.asarray([0, 0, 1]), real, jnp.asarray([0, 0, 0]))
  real_mean = np.mean(np.asarray(real), 0)
  np.testing.assert_allclose(got, np.sum((np.asarray([2.0, 0.5]) - real_mean) ** 2), rtol=1e-6)
  grad = jax.grad(lambda r: losses.class_moment_matching(fake, jnp.asarray([0, 0, 1]), r,
                                                         jnp.asarray([0, 0, 1])))(real)
  assert not np.any(np.asarray(grad))             # real statistics are data


def test_an_oversized_hole_is_held_to_the_dense_voxels_of_the_requested_size():
  """A request smaller than its background's nodule: its target shares of dense voxels
  shrink by the part of the hole its own would fill, its mean is left out; other requests
  keep the class's targets."""
  hole = np.zeros((2, 4, 2, 1, 1), np.float32)
  hole[:, :, :] = 1                               # 8 hole voxels each
  fraction = losses.requested_fraction(jnp.asarray(hole), jnp.asarray([2.0, 2.0]),
                                       jnp.asarray([True, False]))
  np.testing.assert_allclose(fraction, [0.25, 1.0])
  target = jnp.asarray([[-0.5, 0.4, 0.2]] * 2)
  scaled, weight = losses.in_requested_terms(target, fraction)
  # sample 0: 2 voxels' worth of a real nodule's dense share, spread over 8
  np.testing.assert_allclose(scaled, [[-0.5, 0.1, 0.05], [-0.5, 0.4, 0.2]])
  np.testing.assert_array_equal(weight, [[0, 1, 1], [1, 1, 1]])
  # class matching: the mean counts only the request that fills its hole; the shares both,
  # each against its own target
  fake = jnp.asarray([[0.3, 0.1, 0.1], [-0.3, 0.6, 0.2]])
  real = jnp.asarray([[-0.5, 0.4, 0.2], [-0.5, 0.4, 0.2]])
  got = losses.class_moment_matching(fake, jnp.asarray([0, 0]), real, jnp.asarray([0, 0]), fraction)
  np.testing.assert_allclose(got, 0.2 ** 2 + ((0.0 + 0.2) / 2) ** 2 + ((0.05 + 0.0) / 2) ** 2,
                             rtol=1e-6)
  got = losses.sample_moment_matching(fake, scaled, weight)   # per sample, per statistic
  np.testing.assert_allclose(got, (0.05 ** 2 + 0.2 ** 2 + 0.2 ** 2) / 2, rtol=1e-6)


def test_requested_hole_voxels_count_the_sphere_of_that_size():
  config = get_config("demo")
  diameter = jnp.asarray([6.0, 14.0])
  got = np.asarray(inpaint.requested_hole_voxels(config, diameter, (16, 40, 40)))
  radius = (np.asarray(diameter) / 2 + config.mask.margin_mm) * (1 + config.mask.jitter / 2)
  np.testing.assert_allclose(got, 4 / 3 * np.pi * radius ** 3 / 2.0, rtol=0.06)  # 2 mm³ voxels


def test_size_matched_moments_and_sample_matching_by_hand():
  table = jnp.asarray([[0, 5.0, 1, 0, 0], [0, 15.0, 3, 0, 0], [1, 20.0, 9, 9, 9]])
  got = np.asarray(losses.size_matched_moments(
      table, jnp.asarray([0, 0, 1, 0]), jnp.asarray([5.0, 10.0, 5.0, 15.0])))
  np.testing.assert_allclose(got[0], [1, 0, 0], atol=1e-4)   # the 5 mm benign nodule
  np.testing.assert_allclose(got[1], [2, 0, 0], atol=1e-6)   # halfway: their mean
  np.testing.assert_allclose(got[2], [9, 9, 9], atol=1e-6)   # the only malignant one, far
  np.testing.assert_allclose(got[3], [3, 0, 0], atol=1e-4)
  fake = jnp.asarray([[1.0, 0.0], [0.0, 0.0], [5.0, 5.0]])
  target = jnp.asarray([[0.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
  weight = jnp.asarray([1.0, 1.0, 0.0])
  np.testing.assert_allclose(losses.sample_moment_matching(fake, target, weight), (1 + 4) / 2)
  assert float(losses.sample_moment_matching(fake, target, jnp.zeros(3))) == 0.0


def test_size_matched_moments_borrow_from_the_other_class_by_hand():
  """With `other_class` 0.5, asked for benign at 20 mm: the far 5 mm benign nodule weighs
  exp(-28.125) (Gaussian, 2 mm), the malignant one at 20 mm 0.5; malignant at 5 mm: the
  other way round."""
  table = jnp.asarray([[0, 5.0, 1, 0], [1, 20.0, 9, 9]])
  got = np.asarray(losses.size_matched_moments(
      table, jnp.asarray([0, 1]), jnp.asarray([20.0, 5.0]), other_class=0.5))
  w = np.exp(-0.5 * (15 / 2) ** 2)
  np.testing.assert_allclose(got[0], (w * np.array([1, 0]) + 0.5 * np.array([9, 9])) / (w + 0.5),
                             rtol=1e-5)
  np.testing.assert_allclose(got[1], (w * np.array([9, 9]) + 0.5 * np.array([1, 0])) / (w + 0.5),
                             rtol=1e-5)
  alone = losses.size_matched_moments(table, jnp.asarray([0]), jnp.asarray([20.0]))
  np.testing.assert_allclose(alone[0], [1, 0], atol=1e-6)   # without: the nearest of its class
  both = jnp.asarray([[0, 10.0, 1], [1, 10.0, 3]])            # one of each at the same size
  for other, expected in ((0.5, (1 + 0.5 * 3) / 1.5), (1.0, 2.0), (0.0, 1.0)):
    got = losses.size_matched_moments(both, jnp.asarray([0]), jnp.asarray([10.0]),
                                      other_class=other)
    np.testing.assert_allclose(got[0], [expected], rtol=1e-6)


def test_hole_histogram_distance_against_scipy():
  """The 1D Wasserstein-1 distance of hole intensities against scipy's, per sample, in
  holes of different sizes; a permutation inside the hole costs nothing (a voxel L1 would)."""
  from scipy.stats import wasserstein_distance
  rng = np.random.default_rng(0)
  shape = (3, 4, 5, 6, 1)
  hole = rng.uniform(size=shape) < np.asarray([0.2, 0.5, 0.9])[:, None, None, None, None]
  fake, real = (rng.uniform(-1, 1, shape).astype(np.float32) for _ in range(2))
  weight = np.asarray([1.0, 0.0, 2.0], np.float32)
  per = [wasserstein_distance(fake[i][hole[i]], real[i][hole[i]]) for i in range(3)]
  distance = lambda f, r, w: losses.hole_histogram_distance(
      losses.sorted_in_hole(f, hole), losses.sorted_in_hole(r, hole), w)
  got = distance(jnp.asarray(fake), jnp.asarray(real), jnp.asarray(weight))
  np.testing.assert_allclose(got, (per[0] + 2 * per[2]) / 3, rtol=1e-5)
  shuffled = real.copy()
  shuffled[0][hole[0]] = rng.permutation(real[0][hole[0]])
  one = jnp.asarray([1.0, 0.0, 0.0])
  assert float(distance(shuffled, real, one)) < 1e-7
  grad = jax.grad(lambda f, r: distance(f, r, one), (0, 1))(jnp.asarray(fake), jnp.asarray(real))
  assert np.all(np.asarray(grad[0])[0][hole[0]] != 0)           # every hole voxel moves
  assert not np.any(np.asarray(grad[0])[0][~hole[0]]) and not np.any(np.asarray(grad[1]))


def test_hole_quantile_distance_against_scipy():
  """A hole's values against a distribution given by its quantiles: scipy's W1 against a
  large sample of that distribution (uniform on [a, b], whose quantile function is linear,
  so the 32 levels hold it exactly), per sample, in holes of different sizes."""
  from scipy.stats import wasserstein_distance
  rng = np.random.default_rng(1)
  shape = (3, 8, 10, 12, 1)
  hole = rng.uniform(size=shape) < np.asarray([0.1, 0.4, 0.9])[:, None, None, None, None]
  fake = rng.normal(0, 0.4, shape).astype(np.float32)
  bounds = np.asarray([[-1.0, 0.0], [-0.5, 0.5], [0.0, 0.2]])
  levels = (np.arange(losses.QUANTILE_LEVELS) + 0.5) / losses.QUANTILE_LEVELS
  quantiles = bounds[:, :1] + (bounds[:, 1:] - bounds[:, :1]) * levels
  weight = np.asarray([1.0, 0.0, 2.0], np.float32)
  per = [wasserstein_distance(fake[i][hole[i]], rng.uniform(*bounds[i], 200_000))
         for i in range(3)]
  distance = lambda f, q: losses.hole_quantile_distance(
      losses.sorted_in_hole(f, hole), jnp.asarray(q, jnp.float32), jnp.asarray(weight))
  got = distance(jnp.asarray(fake), quantiles)
  np.testing.assert_allclose(got, (per[0] + 2 * per[2]) / 3, atol=5e-3)
  # quantiles made from the hole itself: the distance is the levels' discretisation only
  own = losses.hole_quantiles(fake, hole)
  assert float(distance(fake, own)) < 0.02
  grad = jax.grad(lambda f: distance(f, quantiles))(jnp.asarray(fake))
  assert not np.any(np.asarray(grad)[~hole]) and np.all(np.asarray(grad)[0][hole[0]] != 0)


def test_core_weight_counts_the_densest_fifth_more():
  """With a core weight β the sorted values at levels (i + 1/2) / n >= 0.8 count 1 + β times,
  by hand for both distances; a hole that misses its real values only in the densest fifth
  costs 1 + β times as much as without the weight."""
  rng = np.random.default_rng(2)
  shape = (2, 4, 5, 6, 1)
  hole = rng.uniform(size=shape) < np.asarray([0.3, 0.8])[:, None, None, None, None]
  fake, real = (rng.uniform(-1, 1, shape).astype(np.float32) for _ in range(2))
  quantiles = np.sort(rng.uniform(-1, 1, (2, losses.QUANTILE_LEVELS)), -1).astype(np.float32)
  levels = (np.arange(losses.QUANTILE_LEVELS) + 0.5) / losses.QUANTILE_LEVELS
  one = jnp.asarray([1.0, 1.0])
  by_hand = {"real": [], "quantiles": []}
  for b in range(2):
    f, r = np.sort(fake[b][hole[b]]), np.sort(real[b][hole[b]])
    at = (np.arange(len(f)) + 0.5) / len(f)
    w = 1.0 + 2.5 * (at >= 0.8)
    by_hand["real"].append(np.mean(w * np.abs(f - r)))
    by_hand["quantiles"].append(np.mean(w * np.abs(f - np.interp(at, levels, quantiles[b]))))
  fake_values = losses.sorted_in_hole(jnp.asarray(fake), hole)
  real_values = losses.sorted_in_hole(jnp.asarray(real), hole)
  np.testing.assert_allclose(losses.hole_histogram_distance(fake_values, real_values, one, 2.5),
                             np.mean(by_hand["real"]), rtol=1e-5)
  np.testing.assert_allclose(losses.hole_quantile_distance(fake_values, quantiles, one, 2.5),
                             np.mean(by_hand["quantiles"]), rtol=1e-5)
  # β 0 is the plain W1, bit for bit
  plain_w1 = jnp.sum(one * jnp.sum(jnp.abs(fake_values.values - real_values.values), -1)
                     / fake_values.count) / jnp.maximum(jnp.sum(one), 1.0)
  np.testing.assert_array_equal(
      losses.hole_histogram_distance(fake_values, real_values, one, 0.0), plain_w1)
  # the real hole is the fake's with its densest fifth 0.1 brighter
  denser = fake.copy()
  for b in range(2):
    values = fake[b][hole[b]]
    rank = np.argsort(np.argsort(values))
    denser[b][hole[b]] = values + 0.1 * ((rank + 0.5) / len(values) >= 0.8)
  denser_values = losses.sorted_in_hole(jnp.asarray(denser), hole)
  plain, weighted = (float(losses.hole_histogram_distance(fake_values, denser_values, one, c))
                     for c in (0.0, 2.5))
  assert plain > 0.01
  np.testing.assert_allclose(weighted, 3.5 * plain, rtol=1e-5)


def _roughness_loop(x: np.ndarray, hole: np.ndarray) -> np.ndarray:
  """An independent slow `losses.roughness`: voxel by voxel, the [1, 2, 1] / 4 blur along each
  axis in turn, edges repeated."""
  smooth = x.astype(np.float64)
  for axis in (1, 2, 3):
    out = np.empty_like(smooth)
    n = x.shape[axis]
    for i in range(n):
      take = lambda j: np.take(smooth, min(max(j, 0), n - 1), axis=axis)
      slot = [slice(None)] * x.ndim
      slot[axis] = i
      out[tuple(slot)] = 0.25 * take(i - 1) + 0.5 * take(i) + 0.25 * take(i + 1)
    smooth = out
  return np.array([np.mean((xi - si)[h > 0] ** 2) for xi, si, h in zip(x, smooth, hole)])


def test_roughness_against_a_loop_and_its_excess_over_real_nodules():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 5, 6, 4, 1)).astype(np.float32)
  hole = (rng.random(x.shape) > 0.4).astype(np.float32)
  np.testing.assert_allclose(losses.roughness(jnp.asarray(x), jnp.asarray(hole)),
                             _roughness_loop(x, hole), rtol=1e-5)
  # a smooth ramp is free inside; a voxel checkerboard keeps a quarter of its squared
  # amplitude (its blur is its mean)
  d, h, w = np.indices((8, 8, 8))
  ramp = (0.1 * (d + h + w))[None, ..., None].astype(np.float32)
  checker = ((d + h + w) % 2)[None, ..., None].astype(np.float32)
  inside = np.zeros_like(ramp)
  inside[:, 2:6, 2:6, 2:6] = 1
  smooth_r, striped_r = (float(losses.roughness(jnp.asarray(v), jnp.asarray(inside))[0])
                         for v in (ramp, checker))
  assert smooth_r < 1e-10
  np.testing.assert_allclose(striped_r, 0.25, rtol=1e-6)
  # the excess: fakes as rough as the real average or smoother cost nothing; the others
  # their margin; no gradient reaches the real side
  fake, real = jnp.asarray([0.1, 0.5, 0.9]), jnp.asarray([0.2, 0.4])
  np.testing.assert_allclose(losses.roughness_excess(fake, real), (0.2 + 0.6) / 3, rtol=1e-6)
  assert not np.any(np.asarray(jax.grad(lambda r: losses.roughness_excess(fake, r))(real)))
  np.testing.assert_allclose(jax.grad(lambda f: losses.roughness_excess(f, real))(fake),
                             [0.0, 1 / 3, 1 / 3], rtol=1e-6)


def test_mode_seeking_by_hand_and_only_inside_the_hole():
  """L_ms = 1 / (d_image / d_noise + eps) over the batch's hole voxels: outside the hole
  nothing counts; equal in-paintings cost 1 / eps; more different ones cost less."""
  hole = np.zeros((2, 1, 2, 2, 1), np.float32)
  hole[0, 0, 0, :] = 1                                  # 2 voxels in sample 0, 1 in sample 1
  hole[1, 0, 1, 1] = 1
  noise_a, noise_b = np.zeros_like(hole), np.ones_like(hole)   # d_noise = 1
  fake_a = np.zeros_like(hole)
  fake_b = np.full_like(hole, 9.0)                      # outside the hole: ignored
  fake_b[0, 0, 0, :, 0] = (0.2, 0.4)
  fake_b[1, 0, 1, 1] = 0.3
  d_image = (0.2 + 0.4 + 0.3) / 3
  got = losses.mode_seeking(*map(jnp.asarray, (fake_a, fake_b, noise_a, noise_b, hole)))
  np.testing.assert_allclose(got, 1 / (d_image + losses.MODE_SEEKING_EPS), rtol=1e-6)
  same = losses.mode_seeking(*map(jnp.asarray, (fake_a, fake_a, noise_a, noise_b, hole)))
  np.testing.assert_allclose(same, 1 / losses.MODE_SEEKING_EPS, rtol=1e-6)
  grad = jax.grad(lambda f: losses.mode_seeking(jnp.asarray(fake_a), f, jnp.asarray(noise_a),
                                                jnp.asarray(noise_b), jnp.asarray(hole)))(
                                                    jnp.asarray(fake_b))
  assert np.all(np.asarray(grad)[hole > 0] < 0) and not np.any(np.asarray(grad)[hole == 0])
