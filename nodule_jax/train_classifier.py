"""Training and evaluating the benign / malignant classifiers (one linear trainer).

Strategies: raw (cross-entropy), weighted (cross-entropy weighted by inverse class frequency
of the training set), synthesis (training shards + synthetic shards). The checkpoint with
the highest validation AUC is evaluated on test: ACC, SEN, SPE at 0.5 and at the
validation-chosen Youden threshold, AUC, each with a stratified-bootstrap 95% CI.
"""
from __future__ import annotations

import csv
import functools
import json
import pathlib
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tensorflow_datasets as tfds
from clu import metric_writers

from nodule_jax import input_pipeline as ip
from nodule_jax import metrics as M
from nodule_jax.checkpoint import Checkpointer, abstract_with_shardings
from nodule_jax.models import resnet3d
from nodule_jax.sharding import batch_sharding, make_mesh, replicated, to_global

PATCH = (32, 64, 64, 1)


@flax.struct.dataclass
class ClsState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


# ----------------------------------------------------------------- data
def data_dirs(config) -> list[str]:
  """The real shard folder (the phantom's by default), plus the synthetic ones if used."""
  if config.strategy == "synthesis" and not config.data.synthetic_dirs:
    raise ValueError("strategy=synthesis needs config.data.synthetic_dirs (shards written "
                     "by `python -m experiments.synthesize`)")
  base = config.data.data_dir
  if not base:
    from data_prep.default_data import phantom_data_dir
    base = str(phantom_data_dir())
  extra = list(config.data.synthetic_dirs) if config.strategy == "synthesis" else []
  return [base] + extra


def label_counts(dirs, split: str = "train") -> np.ndarray:
  """[2] benign, malignant counts over the shard folders (images not decoded)."""
  counts = np.zeros(2, int)
  for d in dirs:
    builder = tfds.builder_from_directory(str(ip.shard_dir(d)))
    ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding(),
                                                   "mask": tfds.decode.SkipDecoding()})
    for ex in tfds.as_numpy(ds.map(lambda e: e["label"])):
      counts[int(ex)] += 1
  return counts


def class_weights(counts: np.ndarray, strategy: str) -> np.ndarray:
  """Inverse class frequency (N / (2·n_c)) for `weighted`, ones otherwise."""
  if strategy != "weighted":
    return np.ones(2, np.float32)
  return (counts.sum() / (2.0 * np.maximum(counts, 1))).astype(np.float32)


# ----------------------------------------------------------------- steps
def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
  total = config.epochs * steps_per_epoch
  warmup = max(min(config.optim.warmup_epochs * steps_per_epoch, total // 2), 1)
  schedule = optax.warmup_cosine_decay_schedule(0.0, config.optim.lr, warmup,
                                                max(total, warmup + 1))
  return optax.adamw(schedule, weight_decay=config.optim.weight_decay)


def train_step(state: ClsState, batch, *, model, tx, weights):
  def loss_fn(params):
    logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                                  batch["image"], train=True, mutable=["batch_stats"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    w = jnp.asarray(weights)[batch["label"]]
    return jnp.sum(w * ce) / jnp.sum(w), (logits, updates["batch_stats"])

  (loss, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  metrics = {"train/loss": loss, "train/accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
             "train/grad_norm": optax.global_norm(grads)}
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       batch_stats=stats, opt_state=opt_state), metrics


def predict_step(state: ClsState, image, *, model):
  logits = model.apply({"params": state.params, "batch_stats": state.batch_stats}, image,
                       train=False)
  return jax.nn.softmax(logits, -1)[:, 1]


def predict(predict_fn, state, data_dir: str, split: str, batch_size: int, mesh) -> dict:
  """Malignant probabilities for every patch of `split`, batches padded to the mesh size."""
  ds = ip.make_dataset(data_dir, split, batch_size, train=False)
  ids = tfds.builder_from_directory(str(ip.shard_dir(data_dir))).as_dataset(
      split=split, decoders={"image": tfds.decode.SkipDecoding(),
                             "mask": tfds.decode.SkipDecoding()})
  nodule_ids = [x.decode() for x in tfds.as_numpy(ids.map(lambda e: e["nodule_id"]))]
  n_dev = mesh.devices.size
  labels, probs = [], []
  for batch in tfds.as_numpy(ds):
    n = len(batch["label"])
    pad = (-n) % n_dev
    image = np.concatenate([batch["image"], np.zeros((pad, *PATCH), np.float32)])
    p = predict_fn(state, to_global({"image": image}, mesh)["image"])
    probs.append(np.asarray(p)[:n])
    labels.append(batch["label"])
  return dict(label=np.concatenate(labels), prob=np.concatenate(probs), nodule_id=nodule_ids)


# ----------------------------------------------------------------- evaluation
def evaluate(val: dict, test: dict, n_boot: int, seed: int) -> dict:
  """Test metrics at 0.5 and at the validation Youden threshold, with CIs."""
  youden = M.youden_threshold(val["label"], val["prob"])
  out = {"val_auc": M.binary_metrics(val["label"], val["prob"])["auc"],
         "youden_threshold": youden, "n_test": int(len(test["label"])),
         "n_test_malignant": int(test["label"].sum())}
  for name, t in (("at_0.5", 0.5), ("at_youden", youden)):
    point = M.binary_metrics(test["label"], test["prob"], t)
    ci = M.bootstrap_ci(test["label"], test["prob"], t, n=n_boot, seed=seed)
    out[name] = {m: {"value": point[m], "ci95": list(ci[m])} for m in M.METRICS}
  return out


def write_predictions(path, pred: dict) -> None:
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["nodule_id", "label", "prob_malignant"])
    for row in zip(pred["nodule_id"], pred["label"], pred["prob"]):
      w.writerow([row[0], int(row[1]), f"{float(row[2]):.6f}"])


def read_predictions(path) -> dict:
  with open(path) as f:
    rows = list(csv.DictReader(f))
  return dict(nodule_id=[r["nodule_id"] for r in rows],
              label=np.array([int(r["label"]) for r in rows]),
              prob=np.array([float(r["prob_malignant"]) for r in rows]))


# ----------------------------------------------------------------- the loop
def _init_variables(config, model, rng):
  variables = model.init(rng, jnp.zeros((1, *PATCH)), train=False)
  return variables["params"], variables["batch_stats"]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = make_mesh(config.num_devices or None)
  dirs = data_dirs(config)
  counts = label_counts(dirs)
  weights = class_weights(counts, config.strategy)
  steps_per_epoch = max(int(counts.sum()) // config.batch_size, 1)
  model = resnet3d.create(config.arch, 2, jnp.dtype(config.model_dtype))
  tx = make_optimizer(config, steps_per_epoch)

  def init(rng):
    params, stats = _init_variables(config, model, rng)
    return ClsState(jnp.zeros((), jnp.int32), params, stats, tx.init(params))

  abstract = jax.eval_shape(init, jax.random.PRNGKey(config.seed))
  sharding = jax.tree.map(lambda _: replicated(mesh), abstract)
  ckpt = Checkpointer(workdir / "checkpoints", config.keep_checkpoints)
  best = Checkpointer(workdir / "best", 1)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(abstract_with_shardings(abstract, sharding))
    print(f"Resuming from the checkpoint at step {int(state.step)} in {ckpt.directory}")
  else:
    state = jax.jit(init, out_shardings=sharding)(jax.random.PRNGKey(config.seed))
    if config.init_from:
      pretrained = Checkpointer(config.init_from).restore(abstract_with_shardings(
          {"params": abstract.params, "batch_stats": abstract.batch_stats},
          {"params": sharding.params, "batch_stats": sharding.batch_stats}))
      state = state.replace(params=pretrained["params"], batch_stats=pretrained["batch_stats"])
  step_fn = jax.jit(functools.partial(train_step, model=model, tx=tx, weights=weights),
                    in_shardings=(sharding, {k: batch_sharding(mesh) for k in ("image", "label")}),
                    out_shardings=(sharding, replicated(mesh)), donate_argnums=(0,))
  predict_fn = jax.jit(functools.partial(predict_step, model=model),
                       in_shardings=(sharding, batch_sharding(mesh)))

  aug = ip.Augment(tuple(config.data.crop_pad), config.data.flip, config.data.scale)
  start = int(state.step)
  ds = ip.make_dataset(dirs, "train", config.batch_size, train=True,
                       seed=config.seed + 7919 * start, aug=aug)
  batches = ip.global_batches(ds.map(lambda b: {"image": b["image"], "label": b["label"]}), mesh)
  writer = metric_writers.create_default_writer(str(workdir), just_logging=jax.process_index() > 0)
  best_file = workdir / "best.json"
  best_auc = json.loads(best_file.read_text())["val_auc"] if best_file.exists() else -1.0
  print(f"{config.arch}, strategy {config.strategy}: {counts[0]} benign / {counts[1]} malignant "
        f"training patches, class weights {weights.round(3).tolist()}, "
        f"{steps_per_epoch} steps/epoch")
  total = config.epochs * steps_per_epoch
  t0 = time.time()
  for step in range(start + 1, total + 1):
    state, m = step_fn(state, next(batches))
    if step % config.log_every == 0 or step % steps_per_epoch == 0:
      m = {k: float(v) for k, v in jax.device_get(m).items()}
      bad = [k for k, v in m.items() if not np.isfinite(v)]
      if bad:
        last = ckpt.latest_step()
        raise FloatingPointError(
            f"non-finite {', '.join(bad)} at step {step}; " + (
                f"the last good checkpoint (step {last}) is kept" if last is not None
                else "no checkpoint had been written yet"))
      writer.write_scalars(step, m)
    if step % steps_per_epoch == 0:
      epoch = step // steps_per_epoch
      val = predict(predict_fn, state, dirs[0], "validation", config.eval_batch_size, mesh)
      auc = M.binary_metrics(val["label"], val["prob"])["auc"]
      writer.write_scalars(step, {"validation/auc": auc})
      rate = (step - start) / (time.time() - t0)
      print(f"epoch {epoch}/{config.epochs} step {step} | loss {m['train/loss']:.4f} | "
            f"val AUC {auc:.4f} | {rate:.2f} steps/s | ETA "
            f"{time.strftime('%H:%M:%S', time.gmtime((total - step) / max(rate, 1e-9)))}",
            flush=True)
      if np.isfinite(auc) and auc > best_auc:
        best_auc = auc
        best.save(step, state)
        best_file.write_text(json.dumps({"val_auc": auc, "step": step, "epoch": epoch}))
      ckpt.save(step, state)
  writer.flush()
  return finish(config, workdir, dirs[0], abstract, sharding, predict_fn, mesh)


def finish(config, workdir, data_dir, abstract, sharding, predict_fn, mesh) -> dict:
  """Evaluates the best-on-validation checkpoint: metrics.json, predictions, ROC PNG."""
  best = Checkpointer(workdir / "best", 1)
  if best.latest_step() is None:
    raise RuntimeError(f"no best checkpoint in {workdir / 'best'} (validation AUC undefined: "
                       "does the validation split hold both classes?)")
  state = best.restore(abstract_with_shardings(abstract, sharding))
  val = predict(predict_fn, state, data_dir, "validation", config.eval_batch_size, mesh)
  test = predict(predict_fn, state, data_dir, "test", config.eval_batch_size, mesh)
  result = evaluate(val, test, config.bootstrap, config.seed)
  result.update(arch=config.arch, strategy=config.strategy, seed=config.seed,
                selected_step=int(state.step))
  write_predictions(workdir / "predictions_validation.csv", val)
  write_predictions(workdir / "predictions_test.csv", test)
  auc = lambda d: M.binary_metrics(d["label"], d["prob"])["auc"]
  M.roc_figure({f"{config.arch}, {config.strategy}": [
      (f"{name} (AUC {auc(d):.3f})", d["label"], d["prob"], style)
      for name, d, style in (("test", test, "C0-"), ("validation", val, "C1--"))]},
      str(workdir / "roc.png"))
  (workdir / "metrics.json").write_text(json.dumps(result, indent=1))
  t = result["at_0.5"]
  print(f"test: ACC {t['acc']['value']:.4f} SEN {t['sen']['value']:.4f} "
        f"SPE {t['spe']['value']:.4f} AUC {t['auc']['value']:.4f} "
        f"(95% CI {t['auc']['ci95'][0]:.3f}-{t['auc']['ci95'][1]:.3f}); wrote {workdir}/metrics.json")
  return result
