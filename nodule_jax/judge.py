"""A classifier trained on real patches only, used to judge synthetic ones (never a loss).

A judge is a classifier workdir of `experiments.train` (e.g. Table 2's `raw` run): its
best-on-validation checkpoint (`best/`), `metrics.json` (the architecture) and
`predictions_validation.csv` (its validation Youden threshold and its own recall and
specificity on real patches: the ceiling a synthetic set is held to).
"""
from __future__ import annotations

import json
import pathlib
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nodule_jax import metrics
from nodule_jax.checkpoint import Checkpointer
from nodule_jax.models import resnet3d


class Judge(NamedTuple):
  arch: str
  apply: Callable          # image [B, 32, 64, 64, 1] in [-1, 1] -> (prob [B], features [B, F])
  threshold: float         # the validation Youden threshold
  validation: dict         # its own validation metrics at that threshold (sen, spe, auc, ...)


def load_judge(classifier_workdir) -> Judge:
  """The judge of a classifier workdir; FileNotFoundError naming what is missing."""
  workdir = pathlib.Path(classifier_workdir)
  needed = [workdir / "metrics.json", workdir / "predictions_validation.csv", workdir / "best"]
  missing = [str(p) for p in needed if not p.exists()]
  if missing:
    raise FileNotFoundError(
        f"{workdir} is not a finished classifier run ({', '.join(missing)} missing): train one "
        "on real patches with `python -m experiments.train --config "
        f"configs/classify.py:demo,strategy=raw --workdir {workdir}`")
  arch = json.loads((workdir / "metrics.json").read_text())["arch"]
  with Checkpointer(workdir / "best") as best:
    state = best.restore(None)
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  model = resnet3d.create(arch, 2)

  @jax.jit
  def apply(image):
    logits, inter = model.apply(variables, image, train=False, mutable=["intermediates"])
    return jax.nn.softmax(logits, -1)[:, 1], inter["intermediates"]["features"][0]

  val = metrics.read_predictions(workdir / "predictions_validation.csv")
  threshold = metrics.youden_threshold(val["label"], val["prob"])
  return Judge(arch, apply, threshold, metrics.binary_metrics(val["label"], val["prob"], threshold))


def judge_batches(judge: Judge, images: np.ndarray, batch_size: int = 16
                  ) -> tuple[np.ndarray, np.ndarray]:
  """images [N, 32, 64, 64, 1] in [-1, 1] -> (malignant probability [N], features [N, F])."""
  probs, feats = [], []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    pad = batch_size - len(chunk)          # one compiled shape
    p, f = judge.apply(jnp.asarray(np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]),
                                                                   chunk.dtype)])))
    probs.append(np.asarray(p)[:len(chunk)])
    feats.append(np.asarray(f)[:len(chunk)])
  return np.concatenate(probs), np.concatenate(feats)
