"""What a perfect generator would paint: real nodules in the same holes, for the evaluation.

  transplants      real nodules of the evaluated splits moved into the other backgrounds
                   (`transplant_pairs`, `transplant_images`): the judge's verdict on them is
                   the faithfulness a generator of those very nodules would get, and
                   what a request's score is ranked against (`rank_against_transplants`)
  training copies  for every request, a training nodule of the requested class and nearest
                   size pasted into the request's hole (`nearest_donors`,
                   `copy_training_nodules`): a generator that learnt the training set
                   perfectly and nothing else. Every target scored on it says whether the
                   training data can meet that target at all.
  training average for every request, the hole HU of the training nodules of its class
                   averaged with a Gaussian weight in diameter (`size_matched_hole_hu`, as
                   L_size weighs them): a generator that learnt, at each size, the average
                   nodule of the class rather than particular nodules
"""
from __future__ import annotations

import numpy as np

from data_prep.labels import CLASS_NAMES
from nodule_jax.metrics import percentile_ci
from nodule_jax.synthesis_metrics import weighted_hu_stats


def transplant_pairs(label: np.ndarray, cls: int, max_donors: int = 8, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Real nodules of class `cls` for every background: what a perfect generator would paint.

  For each background (the host), up to `max_donors` other backgrounds of class `cls` (the
  donors, a seeded draw). label: [N]. Returns host and donor indices [K].
  """
  rng = np.random.default_rng(seed)
  candidates = np.flatnonzero(label == cls)
  pairs = []
  for host in range(len(label)):
    donors = candidates[candidates != host]
    if len(donors) > max_donors:
      donors = rng.choice(donors, max_donors, replace=False)
    pairs += [(host, donor) for donor in donors]
  if not pairs:
    raise ValueError(f"no real {CLASS_NAMES[cls]} nodule among the backgrounds to transplant")
  return tuple(np.array(pairs).T)


def transplant_images(image: np.ndarray, holes: np.ndarray, host: np.ndarray,
                      donor: np.ndarray) -> np.ndarray:
  """The composites of `transplant_pairs`: the donor's voxels inside either patch's hole
  (each the hole of its own nodule), the host's elsewhere, so the host's nodule is gone and
  the donor's whole nodule with its margin is in. image: [N, D, H, W] in [-1, 1]; holes:
  [N, D, H, W] bool; host, donor: [K]. Returns [K, D, H, W]."""
  return np.where(holes[host] | holes[donor], image[donor], image[host])


def transplant_faithfulness(p: np.ndarray, requested: int, threshold: float, host: np.ndarray,
                            donor: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict:
  """`faithfulness` of transplanted real nodules with every host weighted equally (as the
  requests are), and a 95% CI from a bootstrap over the donors (few real nodules of a
  class: their spread is most of the uncertainty). p, host, donor: [K]."""
  hits = (np.asarray(p) >= threshold) == bool(requested)
  return _per_host_mean(hits.astype(float), host, donor, n_boot, seed)


def rank_against_transplants(p_requests: np.ndarray, request_host: np.ndarray,
                             p_transplants: np.ndarray, host: np.ndarray, donor: np.ndarray,
                             requested: int, n_boot: int = 2000, seed: int = 0) -> dict:
  """How often the judge finds a request more of its class than a real nodule of that class
  transplanted into the same background: per (request, transplant) pair of one host,
  1 if the request's malignant probability is higher (requested malignant) or lower
  (requested benign), ½ on a tie; averaged per transplant, then per host (each host weighted
  equally, as in `transplant_faithfulness`, with its donor-bootstrap 95% CI).

  0.5: the judge scores the requests as it scores real nodules of the class. It is the gap
  between the requests' and the transplants' `faithfulness` averaged over thresholds spread
  as the transplants' own scores (plus 0.5), so no threshold has to be chosen: a judge whose
  probabilities are all moved by one increasing function gives the same value.
  p_requests, request_host: [M]; p_transplants, host, donor: [K] (`transplant_pairs`). A host
  with transplants but no request is an error; requests on a host without transplants (the
  only nodule of its class) do not count. The CI covers the donors' spread only."""
  p_requests, p_transplants = np.asarray(p_requests, float), np.asarray(p_transplants, float)
  sign = 1.0 if requested else -1.0
  wins = np.empty(len(p_transplants))
  for h in np.unique(host):
    mine = p_requests[np.asarray(request_host) == h]
    if not len(mine):
      raise ValueError(f"background {h} has transplants but no request to rank against them")
    at = np.asarray(host) == h
    diff = sign * (mine[:, None] - p_transplants[at][None])          # [requests, transplants]
    wins[at] = np.mean((diff > 0) + 0.5 * (diff == 0), axis=0)
  return _per_host_mean(wins, host, donor, n_boot, seed)


def _per_host_mean(values: np.ndarray, host: np.ndarray, donor: np.ndarray, n_boot: int,
                   seed: int) -> dict:
  """The mean of `values` [K] per host, then over hosts, and its 95% CI from a bootstrap over
  the donors."""
  hosts, host_at = np.unique(host, return_inverse=True)
  donors, donor_at = np.unique(donor, return_inverse=True)
  one_hot = np.eye(len(hosts))[host_at]                              # [K, hosts]
  draws = np.random.default_rng(seed).integers(0, len(donors), (n_boot, len(donors)))
  weight = np.stack([np.bincount(d, minlength=len(donors)) for d in draws])[:, donor_at]
  with np.errstate(invalid="ignore"):
    per_host = (weight * values) @ one_hot / (weight @ one_hot)      # NaN: no donor drawn
  value = float(np.mean(values @ one_hot / one_hot.sum(0)))
  return {"value": value, "ci95": list(percentile_ci(np.nanmean(per_host, 1)))}


def nearest_donors(label: np.ndarray, diameter_mm: np.ndarray, cls: int,
                   requested_mm: np.ndarray, k: int = 3, seed: int = 0) -> np.ndarray:
  """For each requested diameter, one of the `k` real nodules of class `cls` nearest to it
  in diameter (a seeded draw, so repeated requests do not all get the same nodule).
  label, diameter_mm: [N] the real nodules'; requested_mm: [M]. Returns donor indices [M]."""
  candidates = np.flatnonzero(label == cls)
  if not len(candidates):
    raise ValueError(f"no real {CLASS_NAMES[cls]} training nodule to copy")
  gap = np.abs(diameter_mm[candidates][None, :] - np.asarray(requested_mm)[:, None])
  nearest = np.argsort(gap, axis=1, kind="stable")[:, :min(k, len(candidates))]   # [M, k]
  pick = np.random.default_rng(seed).integers(0, nearest.shape[1], len(nearest))
  return candidates[nearest[np.arange(len(nearest)), pick]]


def copy_training_nodules(made: dict, background_image: np.ndarray, train: dict,
                          seed: int = 0) -> dict:
  """`made`'s requests answered by copying training nodules instead of generating them.

  made: `evaluate_synthesis.inpaint_both_classes`' arrays (background [M], per class name
  hole_<name> [M, D, H, W] and diameter_<name> [M]); background_image: [N, D, H, W] in
  [-1, 1]; train: the training patches (image [T, D, H, W], label and diameter_mm [T]).
  Each request's hole gets the voxels of a training nodule of the requested class and
  nearest size (`nearest_donors`; patches are centred on their nodules, so the donor's
  nodule lands in the hole); outside the hole the background is untouched. Returns the same
  keys as `made`, fake_<name> [M, D, H, W] the copies, and donor_<name> [M]."""
  out = dict(made)
  context = background_image[made["background"]]
  for cls, name in enumerate(CLASS_NAMES):
    donor = nearest_donors(train["label"], train["diameter_mm"], cls, made[f"diameter_{name}"],
                           seed=seed + cls)
    out[f"fake_{name}"] = np.where(made[f"hole_{name}"], train["image"][donor], context)
    out[f"donor_{name}"] = donor
  return out


SIZE_BANDWIDTH_MM = 2.0   # the Gaussian's width in diameter: L_size's (losses.size_matched_moments)


def size_matched_hole_hu(diameter: np.ndarray, voxels: np.ndarray, train_hu: list[np.ndarray],
                         train_diameter: np.ndarray, bandwidth_mm: float = SIZE_BANDWIDTH_MM
                         ) -> dict:
  """The hole HU statistics of requests answered by the training set's average nodule of
  their class and size: each request's `voxels` shared among the training nodules of its
  class by a Gaussian weight in diameter (the nearest ones when none is close), each
  nodule's share spread evenly over its own hole's voxels.

  diameter, voxels: [M] the requests' diameters (mm) and hole sizes; train_hu: T arrays,
  each a training nodule's HU in its own hole; train_diameter: [T] (mm). Returns
  `weighted_hu_stats` (voxels: the requests' total).
  """
  closeness = -0.5 * ((np.asarray(train_diameter)[None] - np.asarray(diameter)[:, None])
                      / bandwidth_mm) ** 2                                          # [M, T]
  weight = np.exp(closeness - closeness.max(1, keepdims=True))
  owed = (weight / weight.sum(1, keepdims=True) * np.asarray(voxels)[:, None]).sum(0)   # [T]
  return weighted_hu_stats(np.concatenate(train_hu), np.concatenate(
      [np.full(hu.size, share / hu.size) for hu, share in zip(train_hu, owed)]))
