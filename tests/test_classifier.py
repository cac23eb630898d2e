"""Classifier training, evaluation, sweep and Table 2 on real shards made from the phantom."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs.classify import get_config
from experiments.train import train
from nodule_jax import input_pipeline, metrics, train_classifier
from nodule_jax.checkpoint import Checkpointer


def test_class_weights_are_inverse_frequency(shards):
  real, syn, counts = shards
  np.testing.assert_array_equal(input_pipeline.label_counts([str(real)]), counts["train"])
  both = input_pipeline.label_counts([str(real), str(syn)])
  assert both[0] == counts["train"][0] and both[1] == 2 * counts["train"][1]
  w = train_classifier.class_weights(np.array([30, 10]), "weighted")
  np.testing.assert_allclose(w, [40 / 60, 40 / 20])
  np.testing.assert_array_equal(train_classifier.class_weights(np.array([30, 10]), "raw"), [1, 1])


def test_synthesis_strategy_trains_and_writes_the_evaluation(shards, tmp_path):
  real, syn, counts = shards
  config = get_config("smoke,strategy=synthesis")
  config.data.data_dir = str(real)
  config.data.synthetic_dirs = (str(syn),)
  config.num_devices = 2
  result = train(config, tmp_path)
  saved = json.loads((tmp_path / "metrics.json").read_text())
  assert saved["strategy"] == "synthesis" and saved["n_test"] == counts["test"].sum()
  best = json.loads((tmp_path / "best.json").read_text())
  assert result["val_auc"] == pytest.approx(best["val_auc"])  # the selected checkpoint
  preds = metrics.read_predictions(tmp_path / "predictions_test.csv")
  val = metrics.read_predictions(tmp_path / "predictions_validation.csv")
  assert len(preds["label"]) == counts["test"].sum()
  assert np.all((preds["prob"] >= 0) & (preds["prob"] <= 1))
  # metrics.json is the evaluation of the saved predictions, at the validation threshold
  assert saved["youden_threshold"] == pytest.approx(
      metrics.youden_threshold(val["label"], val["prob"]), abs=1e-5)
  assert saved["val_auc"] == pytest.approx(
      metrics.binary_metrics(val["label"], val["prob"])["auc"], abs=1e-5)
  for at, t in (("at_0.5", 0.5), ("at_youden", saved["youden_threshold"])):
    point = metrics.binary_metrics(preds["label"], preds["prob"], t)
    ci = metrics.bootstrap_ci(preds["label"], preds["prob"], t, n=config.bootstrap, seed=0)
    for m in metrics.METRICS:
      assert saved[at][m]["value"] == pytest.approx(point[m], abs=1e-5), (at, m)
      np.testing.assert_allclose(saved[at][m]["ci95"], ci[m], atol=1e-5, err_msg=f"{at} {m}")
  assert (tmp_path / "roc.png").read_bytes()[:4] == b"\x89PNG"


def test_selection_score_prefers_a_calibrated_checkpoint_by_loss_and_ranks_by_auc():
  """Two validation predictions with the same ranking (AUC 1): one saturated near 0, one
  calibrated. By AUC they tie; by log-loss (computed here by hand) the calibrated one wins."""
  label = np.array([0, 0, 1, 1])
  saturated = {"label": label, "prob": np.array([1e-6, 2e-6, 3e-6, 4e-6])}
  calibrated = {"label": label, "prob": np.array([0.2, 0.3, 0.7, 0.8])}
  auc = [train_classifier.selection_score(v, "auc") for v in (saturated, calibrated)]
  assert auc == [1.0, 1.0]
  by_hand = lambda p: np.mean(-(label * np.log(p) + (1 - label) * np.log(1 - p)))
  for v in (saturated, calibrated):
    assert train_classifier.selection_score(v, "loss") == pytest.approx(-by_hand(v["prob"]))
  assert (train_classifier.selection_score(calibrated, "loss")
          > train_classifier.selection_score(saturated, "loss"))
  with pytest.raises(ValueError, match="select_by must be one of"):
    train_classifier.selection_score(calibrated, "accuracy")


def test_synthesis_without_synthetic_shards_is_a_clear_error():
  with pytest.raises(ValueError, match="synthetic_dirs"):
    train_classifier.data_dirs(get_config("smoke,strategy=synthesis"))
  with pytest.raises(ValueError, match="unknown strategy"):
    get_config("strategy=bagging")


@pytest.mark.slow
def test_sweep_then_table2(shards, tmp_path):
  real, syn, _ = shards
  env = {**os.environ, "XLA_FLAGS": ""}
  root = tmp_path / "grid"
  sweep = [sys.executable, "-m", "experiments.sweep", "--config", "configs/table2.py:demo",
           "--workdir", str(root), "--config.archs=('tiny',)",
           "--config.strategies=('raw', 'weighted')", f"--config.data_dir={real}",
           "--config.overrides=('--config.epochs=1', '--config.bootstrap=50')",
           "--config.processes=2"]
  cwd = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(sweep, capture_output=True, text=True, env=env, cwd=cwd, timeout=900)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert "2 to run" in proc.stdout
  again = subprocess.run(sweep, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
  assert "2 already finished, 0 to run" in again.stdout  # finished runs are skipped
  table = subprocess.run([sys.executable, "-m", "experiments.table2", "--workdir", str(root),
                          "--bootstrap", "50"], capture_output=True, text=True, env=env,
                         cwd=cwd, timeout=300)
  assert table.returncode == 0, table.stderr[-2000:]
  text = (root / "table2.md").read_text()
  assert (root / "table2_roc.png").read_bytes()[:4] == b"\x89PNG"
  assert "| **Raw** |" in text and "| **Raw + Weighted Loss** |" in text
  assert text.count("| tiny |") == 4 and text.count("| Mean |") == 4
  assert "| Raw + Weighted Loss | **Mean** |" in text


def test_bfloat16_resnet_keeps_float32_variables_and_close_logits():
  """config.model_dtype=bfloat16 (for accelerators): same variables (f32), bf16 compute."""
  import jax
  import jax.numpy as jnp

  from nodule_jax.models import resnet3d
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 64, 64, 1))
  m32, m16 = (resnet3d.create("tiny", 2, d) for d in (jnp.float32, jnp.bfloat16))
  variables = m32.init(jax.random.PRNGKey(1), x, train=False)
  assert {leaf.dtype for leaf in jax.tree.leaves(m16.init(jax.random.PRNGKey(1), x, train=False))
          } == {jnp.dtype("float32")}
  y32, y16 = (m.apply(variables, x, train=False) for m in (m32, m16))
  assert y16.dtype == jnp.float32          # the head and the pooled features stay f32
  np.testing.assert_allclose(y16, y32, atol=0.05 * float(jnp.abs(y32).max()) + 1e-3)
  assert not np.allclose(y16, y32, atol=1e-7)   # ...and the bf16 model did compute in bf16


@pytest.mark.slow
def test_a_stopped_run_resumes_from_its_last_checkpoint(shards, tmp_path, capsys):
  real, _, counts = shards
  config = get_config("smoke")
  config.data.data_dir = str(real)
  config.num_devices = 2
  config.epochs = 1                       # "killed" after the first epoch's checkpoint
  train_classifier.train_and_evaluate(config, tmp_path)
  per_epoch = max(int(counts["train"].sum()) // config.batch_size, 1)
  assert Checkpointer(tmp_path / "checkpoints").all_steps() == [per_epoch]
  first_best = json.loads((tmp_path / "best.json").read_text())
  config.epochs = 2                       # the same run, started again
  train_classifier.train_and_evaluate(config, tmp_path)
  out = capsys.readouterr().out
  assert f"Resuming from the checkpoint at step {per_epoch}" in out
  assert "epoch 1/2" not in out and "epoch 2/2" in out     # epoch 1 is not trained again
  assert Checkpointer(tmp_path / "checkpoints").all_steps() == [per_epoch, 2 * per_epoch]
  # best.json holds the epoch with the highest validation AUC of both runs
  aucs = {int(e): float(a) for e, a in re.findall(r"epoch (\d)/2 .*?val AUC ([\d.]+)", out)}
  assert set(aucs) == {2}
  best = json.loads((tmp_path / "best.json").read_text())
  top_epoch = 2 if aucs[2] > first_best["val_auc"] else 1
  assert best["epoch"] == top_epoch
  assert best["val_auc"] == pytest.approx(max(aucs[2], first_best["val_auc"]), abs=1e-4)


def test_a_nan_loss_stops_naming_the_step(shards, tmp_path):
  real, _, _ = shards
  config = get_config("smoke")
  config.data.data_dir = str(real)
  config.num_devices = 2
  config.optim.lr = float("nan")        # finite loss at step 1, NaN parameters after it
  with pytest.raises(FloatingPointError, match=r"non-finite loss at step 2: .*train/loss=nan"):
    train_classifier.train_and_evaluate(config, tmp_path)
  assert (Checkpointer(tmp_path / "checkpoints").latest_step() or 0) < 2  # NaN state not saved


def test_class_weights_change_the_loss_the_step_optimises():
  """On an imbalanced batch the weighted loss is Σ w_y·CE / Σ w_y of the step's own logits,
  not the plain mean, and it moves the parameters differently."""
  import jax
  import jax.numpy as jnp
  import optax

  from nodule_jax.models import resnet3d
  model = resnet3d.create("tiny")
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 32, 64, 64, 1))
  label = jnp.array([1, 0, 0, 0, 0, 0, 0, 0])
  variables = model.init(jax.random.PRNGKey(1), x[:1], train=False)
  tx = optax.sgd(0.1)
  state = train_classifier.ClsState(jnp.zeros((), jnp.int32), variables["params"],
                                    variables["batch_stats"], tx.init(variables["params"]))
  logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  ce = -np.asarray(jax.nn.log_softmax(logits))[np.arange(8), np.asarray(label)]
  results = {}
  for name, w in (("raw", np.ones(2, np.float32)),
                  ("weighted", train_classifier.class_weights(np.array([7, 1]), "weighted"))):
    new, m = train_classifier.train_step(state, {"image": x, "label": label}, model=model, tx=tx,
                                         weights=w)
    expected = np.sum(w[np.asarray(label)] * ce) / np.sum(w[np.asarray(label)])
    np.testing.assert_allclose(m["train/loss"], expected, rtol=1e-5)
    results[name] = (float(m["train/loss"]), new.params)
  np.testing.assert_allclose(train_classifier.class_weights(np.array([7, 1]), "weighted"),
                             [8 / 14, 8 / 2])
  assert abs(results["raw"][0] - results["weighted"][0]) > 1e-3
  assert not np.allclose(results["raw"][1]["fc"]["kernel"], results["weighted"][1]["fc"]["kernel"])


def test_prediction_ids_travel_with_their_patches(built):
  """Batches in another order (as from reordered shards): every probability still lands on
  its own nodule id, and the result is sorted by id."""
  import jax
  import jax.numpy as jnp
  import tensorflow as tf

  from nodule_jax.intensity import hu_to_unit
  from nodule_jax.sharding import make_mesh
  data_dir = str(built[0])
  raw = tfds.as_numpy(input_pipeline.load_split(data_dir, "train"))
  expected = {ex["nodule_id"].decode(): float(np.mean(hu_to_unit(ex["image"]))) for ex in raw}
  ds = input_pipeline.eval_batches(data_dir, "train", 4).unbatch().shuffle(64, seed=3).batch(4)
  mesh = make_mesh(2)
  mean_image = jax.jit(lambda image: jnp.mean(image, axis=(1, 2, 3, 4)))
  out = train_classifier.predict(mean_image, tfds.as_numpy(ds), -(-len(expected) // 4), 4, mesh)
  assert out["nodule_id"] == sorted(expected)
  np.testing.assert_allclose(out["prob"], [expected[i] for i in out["nodule_id"]], rtol=1e-5)
  shuffled = [b["nodule_id"][0].decode() for b in tfds.as_numpy(ds)]
  assert shuffled != sorted(shuffled)      # the batches really came in another order
