"""The judge: one classifier run, or an ensemble of several (probabilities averaged)."""
import json

import jax
import numpy as np
import pytest

from nodule_jax import metrics
from nodule_jax.checkpoint import Checkpointer
from nodule_jax.judge import judge_batches, load_judge
from nodule_jax.models import resnet3d

IDS = [f"n{i}" for i in range(8)]
LABELS = np.array([0, 0, 0, 0, 0, 1, 1, 1])


def _finished_run(folder, seed: int, probs: np.ndarray, order=None):
  """A classifier workdir as experiments.train leaves it: best/, metrics.json, validation CSV."""
  model = resnet3d.create("tiny", 2)
  variables = model.init(jax.random.key(seed), np.zeros((1, 32, 64, 64, 1), np.float32))
  with Checkpointer(folder / "best", 1) as best:
    best.save(1, {"params": variables["params"], "batch_stats": variables["batch_stats"]})
  (folder / "metrics.json").write_text(json.dumps({"arch": "tiny"}))
  order = np.arange(len(IDS)) if order is None else order
  metrics.write_predictions(folder / "predictions_validation.csv",
                            {"nodule_id": [IDS[i] for i in order], "label": LABELS[order],
                             "prob": probs[order]})
  return folder


def test_an_ensemble_judge_averages_its_members_and_thresholds_their_mean(tmp_path):
  rng = np.random.default_rng(0)
  p0, p1 = (np.round(rng.uniform(size=8), 6) for _ in range(2))  # as the CSV holds them
  a = _finished_run(tmp_path / "a", 0, p0)
  b = _finished_run(tmp_path / "b", 1, p1, order=rng.permutation(8))  # rows in another order
  images = rng.uniform(-1, 1, (3, 32, 64, 64, 1)).astype(np.float32)
  (pa, fa), (pb, fb) = (judge_batches(load_judge(w), images) for w in (a, b))
  assert not np.allclose(pa, pb)  # two different networks
  for spec in ([a, b], f"{a},{b}"):
    judge = load_judge(spec)
    p, f = judge_batches(judge, images)
    np.testing.assert_allclose(p, (pa + pb) / 2, rtol=1e-6)
    np.testing.assert_allclose(f, np.concatenate([fa, fb], -1), rtol=1e-6)
    assert judge.threshold == metrics.youden_threshold(LABELS, (p0 + p1) / 2)
    assert judge.arch == "tiny ×2"
  assert load_judge(a).threshold == metrics.youden_threshold(LABELS, p0)


def test_an_ensemble_of_runs_validated_on_other_nodules_is_refused(tmp_path):
  a = _finished_run(tmp_path / "a", 0, np.linspace(0, 1, 8))
  b = _finished_run(tmp_path / "b", 1, np.linspace(0, 1, 8))
  lines = (b / "predictions_validation.csv").read_text().splitlines()
  (b / "predictions_validation.csv").write_text("\n".join(lines[:-1]) + "\n")
  with pytest.raises(ValueError, match="validated on other nodules or labels"):
    load_judge([a, b])
  c = _finished_run(tmp_path / "c", 2, np.linspace(0, 1, 8))       # same nodules, a label
  lines = (c / "predictions_validation.csv").read_text().splitlines()
  lines[1] = lines[1].replace(",0,", ",1,")
  (c / "predictions_validation.csv").write_text("\n".join(lines) + "\n")
  with pytest.raises(ValueError, match="validated on other nodules or labels"):
    load_judge([a, c])
  with pytest.raises(FileNotFoundError, match="metrics.json"):
    load_judge([a, tmp_path / "missing"])


def test_judge_without_nodule_is_what_the_context_alone_tells():
  from nodule_jax.judge_references import EMPTY_HOLE_HU, judge_without_nodule
  from nodule_jax.intensity import hu_to_unit
  from nodule_jax.judge import Judge
  label = np.array([0, 0, 0, 1, 1, 1])
  context = np.array([-0.5, -0.4, 0.3, 0.2, 0.4, 0.5])     # one pair out of order: AUC 8/9
  nodule = np.where(label == 1, 0.8, -0.8)
  hole = np.zeros((6, 4, 8, 8), bool)
  hole[:, 1:3, 3:5, 3:5] = True
  image = np.where(hole, nodule[:, None, None, None], context[:, None, None, None])[..., None]
  backgrounds = {"image": image.astype(np.float32), "label": label}
  def reading(voxel):   # a judge that reads one voxel
    apply = lambda x: (jax.nn.sigmoid(8 * x[(slice(None), *voxel, 0)]), x.reshape(len(x), -1))
    return Judge("constructed", apply, 0.5, {})
  by_nodule, by_context = reading((2, 4, 4)), reading((0, 0, 0))
  whole = lambda judge: judge_batches(judge, backgrounds["image"])[0]
  on_nodule = judge_without_nodule(by_nodule, backgrounds, hole, whole(by_nodule), n_boot=200)
  assert on_nodule["auc_whole"] == 1.0 and on_nodule["auc"] == 0.5   # the lung: one value
  lung = float(jax.nn.sigmoid(8 * hu_to_unit(np.float32(EMPTY_HOLE_HU))))
  assert on_nodule["mean_p"] == pytest.approx({"benign": lung, "malignant": lung}, abs=1e-6)
  on_context = judge_without_nodule(by_context, backgrounds, hole, whole(by_context), n_boot=200)
  assert on_context["auc"] == on_context["auc_whole"] == pytest.approx(8 / 9)
  lo, hi = on_context["auc_ci95"]
  assert 0.5 <= lo <= 8 / 9 <= hi <= 1.0
  one_class = {"image": backgrounds["image"][:3], "label": label[:3]}
  assert judge_without_nodule(by_context, one_class, hole[:3], whole(by_context)[:3]) is None
