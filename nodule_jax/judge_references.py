"""What the judge says of real nodules, the references the requests are held to: the
backgrounds with their nodule taken out (how much the context alone tells the class), real
nodules transplanted into the backgrounds, and requests ranked against those transplants.

backgrounds: `evaluate_synthesis.load_patches`' arrays (image [N, D, H, W, 1], label [N]);
own_hole: [N, D, H, W] bool, each background's hole at its own nodule's size."""
from __future__ import annotations

import numpy as np

from data_prep.labels import CLASS_NAMES
from nodule_jax import metrics, synthesis_metrics
from nodule_jax.baselines import (rank_against_transplants, transplant_faithfulness,
                                  transplant_images, transplant_pairs)
from nodule_jax.intensity import hu_to_unit
from nodule_jax.judge import Judge, judge_batches


EMPTY_HOLE_HU = -850.0   # flat lung parenchyma, what is left when the nodule is taken out


def judge_without_nodule(judge: Judge, backgrounds: dict, own_hole: np.ndarray,
                         p_whole: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict | None:
  """How much the judge reads the context: its AUC on the backgrounds' real patches with each
  one's own hole (the nodule and its margin) filled with flat lung (`EMPTY_HOLE_HU`), with a
  stratified-bootstrap CI, beside its AUC on the same patches whole. A label swap keeps the
  context, so the more the context alone tells the class, the less the swap can move the
  judge. backgrounds: `load_patches`' arrays [N, ...]; own_hole: [N, D, H, W] bool; p_whole:
  [N] the judge on the whole patches. None when the backgrounds hold one class only."""
  y = backgrounds["label"]
  if len(np.unique(y)) < 2:
    return None
  emptied = backgrounds["image"].copy()
  emptied[..., 0][own_hole] = hu_to_unit(np.float32(EMPTY_HOLE_HU))
  p_empty, _ = judge_batches(judge, emptied)
  return {"auc": metrics.binary_metrics(y, p_empty)["auc"],
          "auc_ci95": list(metrics.bootstrap_ci(y, p_empty, n=n_boot, seed=seed)["auc"]),
          "auc_whole": metrics.binary_metrics(y, p_whole)["auc"],
          "mean_p": {name: float(p_empty[y == cls].mean())
                     for cls, name in enumerate(CLASS_NAMES) if np.any(y == cls)}}


def transplanted_scores(judge: Judge, backgrounds: dict, own_hole: np.ndarray, seed: int
                        ) -> list[dict]:
  """Per class, real nodules of that class transplanted into the backgrounds
  (`transplant_pairs`, `transplant_images`): host, donor and the judge's malignant
  probability p, each [K]. own_hole: [N, D, H, W] each background's hole at its own size."""
  image, out = backgrounds["image"][..., 0], []
  for cls in range(len(CLASS_NAMES)):
    host, donor = transplant_pairs(backgrounds["label"], cls, seed=seed)
    p = np.concatenate([   # in chunks: 8 composites per background would not fit at scale
        judge_batches(judge, transplant_images(image, own_hole, host[i:i + 64],
                                               donor[i:i + 64])[..., None])[0]
        for i in range(0, len(host), 64)])
    out.append({"host": host, "donor": donor, "p": p})
  return out


def against_transplants(p: np.ndarray, bg: np.ndarray, transplanted: dict, cls: int,
                        threshold: float, host_label: np.ndarray, seed: int) -> dict:
  """Requests of class `cls` (malignant probabilities p [M] of backgrounds bg [M]) against
  the real nodules of that class transplanted into the same backgrounds: faithfulness at the
  threshold for both (`value`, `judge_on_transplanted` with its CI), the threshold-free rank
  (`rank_vs_transplanted`, `rank_against_transplants`, with its CI), and the same split by
  background class (`by_background_class`, host_label [N])."""
  host, donor, p_real = transplanted["host"], transplanted["donor"], transplanted["p"]

  def compare(keep_requests, keep_real):
    share = transplant_faithfulness(p_real[keep_real], cls, threshold, host[keep_real],
                                    donor[keep_real], seed=seed)
    rank = rank_against_transplants(p[keep_requests], bg[keep_requests], p_real[keep_real],
                                    host[keep_real], donor[keep_real], cls, seed=seed)
    return {"value": synthesis_metrics.faithfulness(p[keep_requests], cls, threshold),
            "judge_on_transplanted": share["value"], "judge_on_transplanted_ci95": share["ci95"],
            "rank_vs_transplanted": rank["value"], "rank_vs_transplanted_ci95": rank["ci95"]}

  entry = compare(np.ones_like(bg, bool), np.ones_like(host, bool))
  entry["by_background_class"] = {
      host_name: compare(host_label[bg] == c, host_label[host] == c)
      for c, host_name in enumerate(CLASS_NAMES) if np.any(host_label[host] == c)}
  return entry
