"""A classifier trained on real patches only, used to judge synthetic ones (never a loss).

A judge is a classifier workdir of `experiments.train` (e.g. Table 2's `raw` run): its
best-on-validation checkpoint (`best/`), `metrics.json` (the architecture) and
`predictions_validation.csv` (its validation Youden threshold, and its own recall and
specificity on real patches). Several workdirs (runs of different seeds) make one judge:
their probabilities averaged, their features side by side, the threshold the ensemble's own
on validation; on small data one run's probabilities and threshold swing with its seed, the
ensemble's much less.
"""
from __future__ import annotations

import json
import pathlib
from typing import Callable, NamedTuple, Sequence

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


def load_judge(classifier_workdirs: str | pathlib.Path | Sequence) -> Judge:
  """The judge of one classifier workdir, or the ensemble of several (a sequence, or one
  string of comma-separated folders); FileNotFoundError naming what is missing."""
  classifier_workdirs = workdirs(classifier_workdirs)
  members = [_load_member(pathlib.Path(w)) for w in classifier_workdirs]
  if not members:
    raise ValueError("a judge needs at least one classifier workdir")
  applies = [apply for apply, _, _ in members]

  @jax.jit
  def apply(image):
    outs = [member(image) for member in applies]
    return (jnp.mean(jnp.stack([p for p, _ in outs]), 0),
            jnp.concatenate([f for _, f in outs], -1))

  val = _mean_predictions([pred for _, _, pred in members], classifier_workdirs)
  threshold = metrics.youden_threshold(val["label"], val["prob"])
  archs = sorted({arch for _, arch, _ in members})
  arch = "+".join(archs) + (f" ×{len(members)}" if len(members) > 1 else "")
  return Judge(arch, apply, threshold, metrics.binary_metrics(val["label"], val["prob"], threshold))


def workdirs(spec: str | pathlib.Path | Sequence) -> list[str]:
  """A judge's classifier workdirs: a sequence, or one string of comma-separated folders."""
  if isinstance(spec, (str, pathlib.Path)):
    return [w for w in str(spec).split(",") if w]
  return [str(w) for w in spec]


def _load_member(workdir: pathlib.Path) -> tuple[Callable, str, dict]:
  """(apply, arch, validation predictions) of one finished classifier run."""
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

  def apply(image):
    logits, inter = model.apply(variables, image, train=False, mutable=["intermediates"])
    return jax.nn.softmax(logits, -1)[:, 1], inter["intermediates"]["features"][0]

  return apply, arch, metrics.read_predictions(workdir / "predictions_validation.csv")


def _mean_predictions(predictions: list[dict], folders: list[str]) -> dict:
  """Validation predictions of several runs -> one set, probabilities averaged per nodule."""
  first = predictions[0]
  for pred, folder in zip(predictions[1:], folders[1:]):
    labels = dict(zip(pred["nodule_id"], pred["label"]))
    if labels != dict(zip(first["nodule_id"], first["label"])):
      raise ValueError(f"{folder} was validated on other nodules or labels than "
                       f"{folders[0]}: an ensemble judge needs runs on the same data")
  order = [{nid: i for i, nid in enumerate(p["nodule_id"])} for p in predictions]
  index = [[o[nid] for nid in first["nodule_id"]] for o in order]
  prob = np.mean([p["prob"][i] for p, i in zip(predictions, index)], axis=0)
  return dict(nodule_id=first["nodule_id"], label=first["label"], prob=prob)


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
