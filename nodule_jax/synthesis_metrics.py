"""The numbers that say whether a synthetic set is class-faithful, realistic and diverse.

Pure numpy on arrays the evaluation gathers; each function states its inputs' shapes.
"""
from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity

from nodule_jax.intensity import HU_MAX, HU_MIN
from nodule_jax.metrics import percentile_ci

HU_RANGE = HU_MAX - HU_MIN


# ----------------------------------------------------------------- label swap
def label_swap(p_benign: np.ndarray, p_malignant: np.ndarray, groups: np.ndarray,
               n_boot: int = 2000, seed: int = 0) -> dict:
  """Paired effect of asking for malignant instead of benign.

  p_benign, p_malignant: [N] the judge's malignant probability of the two in-paintings of
  one background with the same mask and noise; groups: [N] background index (draws of one
  background are resampled together). Returns delta (mean p_malignant - p_benign) with a
  95% CI from a bootstrap over backgrounds, and share_higher (pairs where the malignant
  request scores higher).
  """
  delta = np.asarray(p_malignant, float) - np.asarray(p_benign, float)
  ids, inverse = np.unique(groups, return_inverse=True)
  sums, counts = np.bincount(inverse, delta), np.bincount(inverse)
  rng = np.random.default_rng(seed)
  picks = rng.integers(0, len(ids), (n_boot, len(ids)))
  boot = sums[picks].sum(1) / counts[picks].sum(1)
  return dict(delta=float(delta.mean()), delta_ci95=list(percentile_ci(boot)),
              share_higher=float(np.mean(delta > 0)), pairs=int(delta.size),
              backgrounds=int(len(ids)))


def size_matched_pairs(p: np.ndarray, label: np.ndarray, diameter_mm: np.ndarray,
                       width_mm: float, n_boot: int = 2000, seed: int = 0,
                       ties: float = 0.0) -> dict:
  """The label swap's real counterpart: every benign-malignant pair of real nodules whose
  diameters differ by at most `width_mm`, and how the judge orders them.

  p, label, diameter_mm: [N] the judge's malignant probability (or any score), the class
  (0 benign, 1 malignant) and the diameter of each real nodule. Returns pairs, nodules (in
  any pair), delta (mean p_malignant - p_benign over the pairs), share_higher (pairs where
  the malignant one scores higher, each tie counting as `ties` of a pair) and its 95% CI
  from a bootstrap over nodules (each class resampled; None with n_boot 0), share_lower and
  share_tied (pairs scored equal: ratings often, probabilities rarely); with no pair,
  pairs 0 and the rest None.
  """
  p, d = np.asarray(p, float), np.asarray(diameter_mm, float)
  label = np.asarray(label, int)
  benign, malignant = np.where(label == 0)[0], np.where(label == 1)[0]
  match = np.abs(d[benign][:, None] - d[malignant][None, :]) <= width_mm   # [B, M]
  if not match.any():
    return dict(pairs=0, nodules=0, delta=None, share_higher=None, share_higher_ci95=None,
                share_lower=None, share_tied=None)
  diff = p[malignant][None, :] - p[benign][:, None]                         # [B, M]
  higher = match * ((diff > 0) + ties * (diff == 0))
  rng = np.random.default_rng(seed)
  boot = []
  for _ in range(n_boot):   # each pair weighted by how often both its nodules were drawn
    wb = np.bincount(rng.integers(0, len(benign), len(benign)), minlength=len(benign))
    wm = np.bincount(rng.integers(0, len(malignant), len(malignant)), minlength=len(malignant))
    n = wb @ match @ wm
    if n:
      boot.append(wb @ higher @ wm / n)
  share = lambda m: float(m.sum() / match.sum())
  return dict(pairs=int(match.sum()),
              nodules=int(match.any(1).sum() + match.any(0).sum()),
              delta=float(diff[match].mean()), share_higher=share(higher),
              share_higher_ci95=list(percentile_ci(np.array(boot))) if boot else None,
              share_lower=share(match * (diff < 0)), share_tied=share(match * (diff == 0)))


def faithfulness(p: np.ndarray, requested: int, threshold: float) -> float:
  """Share of syntheses the judge assigns to the requested class at its threshold.
  p: [N] malignant probabilities; requested: 0 benign, 1 malignant."""
  called_malignant = np.asarray(p) >= threshold
  return float(np.mean(called_malignant if requested == 1 else ~called_malignant))


# ----------------------------------------------------------------- feature distances
def kid(x: np.ndarray, y: np.ndarray) -> float:
  """Kernel inception distance: the unbiased MMD² with the cubic polynomial kernel
  k(a, b) = (a·b / F + 1)³. x: [M, F], y: [N, F]; NaN unless M, N ≥ 2."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if min(len(x), len(y)) < 2:
    return float("nan")
  f = x.shape[1]
  k = lambda a, b: (a @ b.T / f + 1) ** 3
  kxx, kyy = k(x, x), k(y, y)
  m, n = len(x), len(y)
  return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
               + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * k(x, y).mean())


def frechet(x: np.ndarray, y: np.ndarray) -> float:
  """Fréchet distance of Gaussians fitted to x [M, F] and y [N, F]; NaN unless M, N ≥ 2.

  |μx − μy|² + tr Cx + tr Cy − 2 tr (Cx Cy)^½, with tr (Cx Cy)^½ taken in sample space: for
  centred X, Y, Cx Cy = Xᵀ X Yᵀ Y / ((M−1)(N−1)) has the nonzero eigenvalues of
  (X Yᵀ)(X Yᵀ)ᵀ / ((M−1)(N−1)), so the trace is the nuclear norm of X Yᵀ / √((M−1)(N−1)):
  an [M, N] SVD instead of an [F, F] matrix square root (exact, and fast for wide features).
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if min(len(x), len(y)) < 2:
    return float("nan")
  xc, yc = x - x.mean(0), y - y.mean(0)
  m, n = len(x) - 1, len(y) - 1
  cross = np.linalg.svd(xc @ yc.T, compute_uv=False).sum() / np.sqrt(m * n)
  return float(np.sum((x.mean(0) - y.mean(0)) ** 2) + np.sum(xc ** 2) / m + np.sum(yc ** 2) / n
               - 2 * cross)


def distance_with_ci(distance, x: np.ndarray, y: np.ndarray, n_boot: int = 200, seed: int = 0
                     ) -> dict:
  """distance(x, y) and a 95% percentile CI from resampling both sets (without the draws
  that pick one row twice into a pair, which the unbiased KID would count as a match)."""
  rng = np.random.default_rng(seed)
  boot = []
  for _ in range(n_boot):
    xi = rng.choice(len(x), len(x) - len(x) // 4, replace=False)
    yi = rng.choice(len(y), len(y) - len(y) // 4, replace=False)
    boot.append(distance(x[xi], y[yi]))
  return dict(value=distance(x, y), ci95=list(percentile_ci(boot)))


# ----------------------------------------------------------------- intensities
def hu_stats(values_hu: np.ndarray) -> dict:
  """HU statistics of the voxels in a hole: values [V] -> mean, p90, share > -400, > 200."""
  v = np.asarray(values_hu, float)
  return dict(mean=float(v.mean()), p90=float(np.percentile(v, 90)),
              share_above_minus400=float(np.mean(v > -400)),
              share_above_200=float(np.mean(v > 200)), voxels=int(v.size))


def weighted_hu_stats(values_hu: np.ndarray, weight: np.ndarray) -> dict:
  """`hu_stats` of voxels that count `weight` times each: values, weight [V] (weight ≥ 0,
  not all 0). p90: the smallest value whose cumulative weight reaches 90%; voxels: the
  total weight (rounded)."""
  order = np.argsort(values_hu)
  v, w = np.asarray(values_hu, float)[order], np.asarray(weight, float)[order]
  share = lambda keep: float(np.sum(w[keep]) / np.sum(w))
  return dict(mean=float(np.average(v, weights=w)),
              p90=float(v[np.searchsorted(np.cumsum(w) / np.sum(w), 0.9)]),
              share_above_minus400=share(v > -400), share_above_200=share(v > 200),
              voxels=int(round(np.sum(w))))


def to_hu(x_unit: np.ndarray) -> np.ndarray:
  """[-1, 1] -> HU as float (no rounding)."""
  return (np.asarray(x_unit, np.float64) + 1) / 2 * HU_RANGE + HU_MIN


# ----------------------------------------------------------------- texture
STRIPE_CYCLES = 0.375   # cycles per voxel: the top quarter of the frequencies, up to 0.5


def stripe_share(images: np.ndarray, holes: np.ndarray) -> float:
  """How much of the texture inside the holes is stripes of alternating bright and dark
  voxels: per item and axis, over the hole's bounding box, the share of the spectral energy
  along that axis (each line's mean removed, Hann-windowed) at ≥ STRIPE_CYCLES cycles per
  voxel; the mean over axes and items. Smooth tissue gives a few percent, a 2-voxel
  alternation nearly 1. images: [N, D, H, W]; holes: [N, D, H, W] bool."""
  shares = []
  for image, hole in zip(images, holes):
    where = np.argwhere(hole)
    if len(where) == 0:
      continue
    box = np.asarray(image[tuple(slice(lo, hi + 1)
                                 for lo, hi in zip(where.min(0), where.max(0)))], float)
    for axis in range(3):
      lines = np.moveaxis(box, axis, -1)
      if lines.shape[-1] < 4:
        continue
      lines = (lines - lines.mean(-1, keepdims=True)) * np.hanning(lines.shape[-1])
      energy = np.abs(np.fft.rfft(lines, axis=-1)) ** 2
      cycles = np.fft.rfftfreq(lines.shape[-1])
      total = energy[..., 1:].sum()
      if total > 0:
        shares.append(energy[..., cycles >= STRIPE_CYCLES].sum() / total)
  return float(np.mean(shares)) if shares else float("nan")


# ----------------------------------------------------------------- reconstruction, diversity
def masked_ssim(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
  """Mean of the local 3D SSIM map (scikit-image, 7³ windows) over `region`.
  a, b: [D, H, W] in [-1, 1]; region: [D, H, W] bool."""
  _, full = structural_similarity(a, b, data_range=2.0, full=True)
  return float(full[region].mean())


def reconstruction(real: np.ndarray, fake: np.ndarray, hole: np.ndarray) -> dict:
  """MAE (HU), PSNR (dB, over the 1400 HU window) and SSIM inside the hole, averaged over
  patches. real, fake: [N, D, H, W] in [-1, 1]; hole: [N, D, H, W] bool."""
  mae, psnr, ssim = [], [], []
  for r, f, h in zip(real, fake, hole):
    err = to_hu(f[h]) - to_hu(r[h])
    mae.append(np.mean(np.abs(err)))
    psnr.append(10 * np.log10(HU_RANGE ** 2 / max(np.mean(err ** 2), 1e-12)))
    ssim.append(masked_ssim(r, f, h))
  return dict(mae_hu=float(np.mean(mae)), psnr_db=float(np.mean(psnr)),
              ssim=float(np.mean(ssim)))


def diversity(fakes: np.ndarray, holes: np.ndarray) -> dict:
  """Mean pairwise L1 (HU, over the union of the two holes) and SSIM (over that union)
  among K syntheses of one background. fakes: [K, D, H, W] in [-1, 1]; holes: [K, D, H, W]."""
  l1, ssim = [], []
  for i in range(len(fakes)):
    for j in range(i + 1, len(fakes)):
      region = holes[i] | holes[j]
      l1.append(np.mean(np.abs(to_hu(fakes[i][region]) - to_hu(fakes[j][region]))))
      ssim.append(masked_ssim(fakes[i], fakes[j], region))
  return dict(pairwise_l1_hu=float(np.mean(l1)), pairwise_ssim=float(np.mean(ssim)))
