"""HU statistics inside holes, synthetic and real: per request, by nodule size, and for a
generator that paints the training set's average nodule of each class and size.

Arrays: images and holes [M, D, H, W] (images in [-1, 1]), keep [M] bool; a class-size pass
is `evaluate_synthesis.inpaint_both_classes`' dict (background [M], per class name
fake_<name>, hole_<name> [M, D, H, W], diameter_<name> [M] mm)."""
from __future__ import annotations

from typing import Callable

import numpy as np

from data_prep.labels import CLASS_NAMES
from nodule_jax import synthesis_metrics
from nodule_jax.baselines import SIZE_BANDWIDTH_MM, size_matched_hole_hu
from nodule_jax.synthesis_targets import hu_targets


def hole_hu(images: np.ndarray, holes: np.ndarray, keep: np.ndarray) -> np.ndarray:
  """The HU of every hole voxel of the kept items: [M, D, H, W] x2, [M] -> [V]."""
  return synthesis_metrics.to_hu(images[keep][holes[keep]])


def hu_in_holes(images: np.ndarray, holes: np.ndarray, keep: np.ndarray) -> dict:
  """`synthesis_metrics.hu_stats` of the kept items' hole voxels."""
  return synthesis_metrics.hu_stats(hole_hu(images, holes, keep))


def request_sized_hole(made: dict, name: str, backgrounds: dict) -> np.ndarray:
  """[M] bool: the class-size requests for `name` whose hole the requested diameter sized
  (at least the background's own)."""
  return made[f"diameter_{name}"] >= backgrounds["diameter_mm"][made["background"]]


SIZE_EDGES_MM = (8.0, 12.0, 16.0)   # the size bins of the HU comparison (mm)


def _size_bins(max_d: float) -> tuple[tuple[float, ...], Callable]:
  """(edges (mm), diameters [N] -> bin index [N]): SIZE_EDGES_MM up to the GAN's largest."""
  inner = [e for e in SIZE_EDGES_MM if e < max_d]
  return (0.0, *inner, max_d), lambda d: np.digitize(d, inner)


def hu_by_size(sized: dict, backgrounds: dict, real_all: dict, max_d: float) -> dict:
  """Per class and size bin, the synthetic holes' HU statistics (class-size requests whose
  size sized their hole, binned by requested diameter) and the real ones (every covered real
  nodule of the class, binned by its diameter): where a synthetic class is fainter or brighter.
  real_all: image and hole [N, D, H, W], label and diameter_mm [N]."""
  edges, bin_of = _size_bins(max_d)
  out = {}
  for cls, name in enumerate(CLASS_NAMES):
    kept = request_sized_hole(sized, name, backgrounds)
    rows = []
    for b in range(len(edges) - 1):
      synthetic = kept & (bin_of(sized[f"diameter_{name}"]) == b)
      real = (real_all["label"] == cls) & (bin_of(real_all["diameter_mm"]) == b)
      if synthetic.any() and real.any():
        rows.append({"from_mm": edges[b], "to_mm": edges[b + 1],
                     "n_synthetic": int(synthetic.sum()), "n_real": int(real.sum()),
                     "synthetic": hu_in_holes(sized[f"fake_{name}"], sized[f"hole_{name}"],
                                              synthetic),
                     "real": hu_in_holes(real_all["image"], real_all["hole"], real)})
    out[name] = rows
  return out


def factual_hu_by_size(factual: np.ndarray, real: np.ndarray, hole: np.ndarray,
                       label: np.ndarray, diameter_mm: np.ndarray, max_d: float) -> dict:
  """Per class and size bin, each real nodule against its factual in-painting (its own
  class and size, the same hole): whether the generator paints a nodule as dense as the one
  that was there, the other requests aside. factual, real, hole: [M, D, H, W]; label,
  diameter_mm: [M] the backgrounds'."""
  edges, bin_of = _size_bins(max_d)
  out = {}
  for cls, name in enumerate(CLASS_NAMES):
    rows = []
    for b in range(len(edges) - 1):
      keep = (label == cls) & (bin_of(diameter_mm) == b)
      if keep.any():
        rows.append({"from_mm": edges[b], "to_mm": edges[b + 1], "n": int(keep.sum()),
                     "synthetic": hu_in_holes(factual, hole, keep),
                     "real": hu_in_holes(real, hole, keep)})
    out[name] = rows
  return out


TEXTURE_GROUPS = (("ground glass / part solid", 0.0, 4.0), ("solid", 4.0, 6.0))  # median rating


def factual_hu_by_texture(factual: np.ndarray, real: np.ndarray, hole: np.ndarray,
                          label: np.ndarray, texture: np.ndarray) -> dict:
  """`factual_hu_by_size`'s comparison per class and texture group (TEXTURE_GROUPS, by the
  real nodule's median texture rating): whether the in-painting of a solid nodule is
  denser than that of a ground-glass one, as the real ones are. texture: [M] (NaN: not
  rated, left out)."""
  out = {}
  for cls, name in enumerate(CLASS_NAMES):
    rows = []
    for group, low, high in TEXTURE_GROUPS:
      keep = (label == cls) & (texture >= low) & (texture < high)
      if keep.any():
        rows.append({"texture": group, "n": int(keep.sum()),
                     "synthetic": hu_in_holes(factual, hole, keep),
                     "real": hu_in_holes(real, hole, keep)})
    out[name] = rows
  return out


def training_average(sized: dict, backgrounds: dict, real_all: dict, training: np.ndarray,
                     hu: dict) -> dict:
  """The HU targets a generator painting, at each class-size request, the training set's
  average nodule of that class and size would meet (`baselines.size_matched_hole_hu`),
  against the report's real range (`hu`). real_all: image and hole [N, D, H, W], label and
  diameter_mm [N]; training: [N] bool, its training rows. Returns hu_in_hole
  (synthetic_<name>) and targets."""
  out = {}
  for cls, name in enumerate(CLASS_NAMES):
    rows = np.flatnonzero(training & (real_all["label"] == cls))
    kept = request_sized_hole(sized, name, backgrounds)
    out[f"synthetic_{name}"] = size_matched_hole_hu(
        sized[f"diameter_{name}"][kept], sized[f"hole_{name}"][kept].sum((1, 2, 3)),
        [synthesis_metrics.to_hu(real_all["image"][i][real_all["hole"][i]]) for i in rows],
        real_all["diameter_mm"][rows])
  return {"bandwidth_mm": SIZE_BANDWIDTH_MM, "hu_in_hole": out,
          "targets": hu_targets({**hu, **out})}
