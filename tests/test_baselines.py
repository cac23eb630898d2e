"""What a perfect generator would paint: transplants and training copies (nodule_jax.baselines)."""
import numpy as np
import pytest

from nodule_jax.baselines import (copy_training_nodules, nearest_donors,
                                  rank_against_transplants, transplant_faithfulness,
                                  transplant_images, transplant_pairs)


def test_transplants_move_the_donor_nodule_and_the_ceiling_follows_what_the_judge_reads():
  label = np.array([0, 0, 0, 1, 1])
  context = np.where(label == 1, 0.5, -0.5)                  # the class shows in the context
  nodule = np.where(label == 1, 0.8, -0.8) + 0.01 * np.arange(5)   # ... and in the nodule
  holes = np.zeros((5, 8, 8, 8), bool)
  holes[:, 3:5, 3:5, 3:5] = True
  holes[3, 2:6, 2:6, 2:6] = True                             # a larger malignant nodule
  image = np.where(holes, nodule[:, None, None, None], context[:, None, None, None])
  host, donor = transplant_pairs(label, cls=1)
  composites = transplant_images(image, holes, host, donor)
  assert host.tolist() == [0, 0, 1, 1, 2, 2, 3, 4]           # no host is its own donor
  assert donor.tolist() == [3, 4, 3, 4, 3, 4, 4, 3]
  for h, d, composite in zip(host, donor, composites):
    inside = holes[d] | holes[h]                             # host 3's larger hole too
    assert np.all(composite[inside] == image[d][inside])     # the donor's nodule and margin
    assert np.all(composite[~inside] == context[h])          # the host's context
  by_nodule = (composites[:, 4, 4, 4] > 0).astype(float)     # a judge reading the nodule
  by_context = (composites[:, 0, 0, 0] > 0).astype(float)    # a judge reading the context
  on_nodule = transplant_faithfulness(by_nodule, 1, 0.5, host, donor)
  assert on_nodule == {"value": 1.0, "ci95": [1.0, 1.0]}
  on_context = transplant_faithfulness(by_context, 1, 0.5, host, donor)
  assert on_context["value"] == pytest.approx(2 / 5)        # per host, not per composite
  # a judge that calls donor 3 malignant and donor 4 not: the donors' spread is the CI
  by_donor = (composites[:, 3, 3, 3] < 0.835).astype(float)   # 0.83: donor 3, 0.84: donor 4
  split = transplant_faithfulness(by_donor, 1, 0.5, host, donor)
  assert split["value"] == pytest.approx(0.5)
  assert split["ci95"] == pytest.approx([0.0, 1.0])
  capped_host, _ = transplant_pairs(label, 0, max_donors=1)
  assert np.bincount(capped_host).tolist() == [1] * 5
  with pytest.raises(ValueError, match="no real malignant"):
    transplant_pairs(label[:3], 1)


def test_the_rank_against_transplants_counts_pairs_per_host_and_ignores_calibration():
  request_host, host, donor = np.array([0, 0, 1]), np.array([0, 0, 1]), np.array([2, 3, 2])
  p_requests, p_transplants = np.array([0.6, 0.2, 0.9]), np.array([0.4, 0.6, 0.1])
  # host 0: against donor 2 (0.4) wins 1 and 0, against donor 3 (0.6) a tie (½) and 0 ->
  # (0.5 + 0.25) / 2; host 1: 0.9 against 0.1 -> 1; the mean over hosts
  malignant = rank_against_transplants(p_requests, request_host, p_transplants, host, donor, 1)
  assert malignant["value"] == pytest.approx((0.375 + 1.0) / 2)
  assert malignant["ci95"][0] <= malignant["value"] <= malignant["ci95"][1]
  benign = rank_against_transplants(p_requests, request_host, p_transplants, host, donor, 0)
  assert benign["value"] == pytest.approx(1 - malignant["value"])   # lower is more benign
  order = [2, 0, 1]                     # the requests in another order than the transplants
  shuffled = rank_against_transplants(p_requests[order], request_host[order], p_transplants,
                                      host, donor, 1)
  assert shuffled["value"] == pytest.approx(malignant["value"])
  # requests scored as the real nodules are: 0.5 exactly, whatever the scores
  rng = np.random.default_rng(0)
  host, donor = np.repeat(np.arange(6), 4), rng.integers(6, 12, 24)
  p_real = rng.uniform(size=24)
  alike = rank_against_transplants(p_real, host, p_real, host, donor, 1)
  assert alike["value"] == pytest.approx(0.5)
  # one increasing function applied to every probability (another calibration of the same
  # ranking) leaves the rank as it was, while the share at one threshold moves
  p_requests = np.clip(p_real[rng.permutation(24)] + 0.15, 0, 1)
  recalibrated = lambda p: p ** 3
  before = rank_against_transplants(p_requests, host, p_real, host, donor, 1)
  after = rank_against_transplants(recalibrated(p_requests), host, recalibrated(p_real), host,
                                   donor, 1)
  assert before == after and before["value"] > 0.6
  share_gap = lambda f: (np.mean(f(p_requests) >= 0.5)
                         - transplant_faithfulness(f(p_real), 1, 0.5, host, donor)["value"])
  assert abs(share_gap(lambda p: p) - share_gap(recalibrated)) > 0.1   # 0.13 -> 0.29
  with pytest.raises(ValueError, match="background 5 has transplants but no request"):
    rank_against_transplants(p_requests[:20], host[:20], p_real, host, donor, 1)


def test_nearest_donors_pick_among_the_k_nearest_of_the_requested_class():
  label = np.array([0, 1, 0, 1, 0, 1])
  diameter = np.array([5.0, 20.0, 9.0, 14.0, 6.0, 10.0])
  requested = np.full(200, 13.0)
  one = nearest_donors(label, diameter, 1, requested, k=1)
  assert set(one.tolist()) == {3}                          # 14 mm: the nearest malignant
  two = nearest_donors(label, diameter, 1, requested, k=2, seed=1)
  assert set(two.tolist()) == {3, 5}                       # 14 and 10 mm, never 20
  assert nearest_donors(label, diameter, 0, np.array([5.4, 8.0]), k=1).tolist() == [0, 2]
  every = nearest_donors(label, diameter, 0, requested, k=10)
  assert set(every.tolist()) == {0, 2, 4}                  # k beyond the class: all of it
  with pytest.raises(ValueError, match="no real malignant training nodule"):
    nearest_donors(label * 0, diameter, 1, requested)


def test_training_copies_put_the_donor_in_the_hole_and_leave_the_context():
  rng = np.random.default_rng(0)
  background = rng.uniform(-1, 0, (3, 4, 6, 6))
  train = {"image": rng.uniform(0, 1, (4, 4, 6, 6)), "label": np.array([0, 0, 1, 1]),
           "diameter_mm": np.array([6.0, 12.0, 15.0, 21.0])}
  hole = np.zeros((5, 4, 6, 6), bool)
  hole[:, 1:3, 2:4, 2:4] = True
  hole[4, :, 1:5, 1:5] = True
  made = {"background": np.array([0, 0, 1, 2, 2]),
          "hole_benign": hole, "diameter_benign": np.array([5.0, 13.0, 7.0, 11.0, 6.0]),
          "hole_malignant": ~hole, "diameter_malignant": np.array([16.0, 20.0, 14.0, 22.0, 15.0])}
  copies = copy_training_nodules(made, background, train)
  assert set(copies["donor_benign"].tolist()) <= {0, 1}     # each request: its class's
  assert set(copies["donor_malignant"].tolist()) <= {2, 3}
  for name in ("benign", "malignant"):
    for i, (bg, donor) in enumerate(zip(made["background"], copies[f"donor_{name}"])):
      h = made[f"hole_{name}"][i]
      assert np.array_equal(copies[f"fake_{name}"][i][h], train["image"][donor][h])
      assert np.array_equal(copies[f"fake_{name}"][i][~h], background[bg][~h])
  assert copies["hole_benign"] is hole                      # the requests' own holes


def test_weighted_hu_stats_counts_each_voxel_its_weight_times():
  from nodule_jax.synthesis_metrics import hu_stats, weighted_hu_stats
  values = np.array([-900.0, -500.0, -300.0, 100.0, 300.0])
  ones = weighted_hu_stats(values, np.ones(5))           # equal weights: the plain statistics
  plain = hu_stats(values)
  assert {k: ones[k] for k in ("mean", "share_above_minus400", "share_above_200", "voxels")} == {
      k: plain[k] for k in ("mean", "share_above_minus400", "share_above_200", "voxels")}
  repeated = hu_stats(np.repeat(values, [3, 1, 1, 4, 1]))  # weights as repeats, by hand
  weighted = weighted_hu_stats(values, np.array([3.0, 1, 1, 4, 1]))
  assert weighted["share_above_minus400"] == repeated["share_above_minus400"] == 0.6
  assert weighted["share_above_200"] == 0.1 and weighted["voxels"] == 10
  np.testing.assert_allclose(weighted["mean"], repeated["mean"])
  assert weighted["p90"] == 100.0                          # cumulative weight 0.9 reached at 100


def test_size_matched_hole_hu_is_the_class_and_size_average_of_the_training_holes():
  from nodule_jax.baselines import size_matched_hole_hu
  faint, dense = np.full(10, -800.0), np.full(40, 0.0)     # 10 mm: 0% > -400; 20 mm: 100%
  dense[:20] = -700.0                                      # half of the dense one's hole
  at = lambda d, bandwidth=2.0: size_matched_hole_hu(
      np.array(d), np.array([100.0] * len(d)), [faint, dense], np.array([10.0, 20.0]), bandwidth)
  assert at([10.0])["share_above_minus400"] < 1e-4         # at one nodule's size: that nodule
  np.testing.assert_allclose(at([20.0])["share_above_minus400"], 0.5, atol=1e-4)
  assert at([15.0])["share_above_minus400"] == 0.25        # halfway: half of each, by voxels
  assert at([15.0])["voxels"] == 100
  both = at([10.0, 20.0])                                  # two requests, each its own nodule
  np.testing.assert_allclose(both["share_above_minus400"], 0.25, atol=1e-4)
  assert both["voxels"] == 200
  far = at([60.0], bandwidth=0.1)                          # none close: the nearest, not NaN
  np.testing.assert_allclose(far["share_above_minus400"], 0.5)
