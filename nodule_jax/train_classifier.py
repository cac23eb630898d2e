"""Training and evaluating the benign / malignant classifiers (one linear trainer).

Strategies: raw (cross-entropy), weighted (cross-entropy weighted by inverse class frequency
of the training set), synthesis (training shards + synthetic shards). The checkpoint with
the best validation score (`select_by`: AUC or log-loss) is evaluated on test: ACC, SEN,
SPE at 0.5 and at the validation-chosen Youden threshold, AUC, each with a
stratified-bootstrap 95% CI.
"""
from __future__ import annotations

import functools
import json
import pathlib
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tensorflow_datasets as tfds
from clu import metric_writers
from jax.experimental import multihost_utils
from sklearn.metrics import log_loss

from data_prep.patches import PATCH_SHAPE
from nodule_jax import atomic, input_pipeline, metrics
from nodule_jax.checkpoint import Checkpointer, abstract_with_shardings
from nodule_jax.models import resnet3d
from nodule_jax.optimizers import make_optimizer
from nodule_jax.sharding import batch_sharding, make_mesh, replicated, to_global
from nodule_jax.training import NonFiniteGuard, Progress

INPUT_SHAPE = (*PATCH_SHAPE, 1)   # [D, H, W, C]
ID_BYTES = 128                    # nodule ids cross hosts as fixed-width bytes


@flax.struct.dataclass
class ClsState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


# ----------------------------------------------------------------- data
def data_dirs(config) -> list[str]:
  """The real shard folder, plus the synthetic ones with strategy=synthesis."""
  if config.strategy == "synthesis" and not config.data.synthetic_dirs:
    raise ValueError("strategy=synthesis needs config.data.synthetic_dirs (shards written "
                     "by `python -m experiments.synthesize`)")
  if not config.data.data_dir:
    raise ValueError("config.data.data_dir is empty: the entry points fill it (the phantom by "
                     "default); pass a shard folder")
  extra = list(config.data.synthetic_dirs) if config.strategy == "synthesis" else []
  return [config.data.data_dir] + extra


SELECT_BY = ("auc", "loss")


def selection_score(val: dict, select_by: str) -> float:
  """Higher is better: the validation AUC, or minus the validation log-loss (cross-entropy
  of the predicted malignant probability; it also punishes a checkpoint that ranks well
  but is saturated, e.g. with BatchNorm statistics not yet settled early in a short run).
  val: label [N] in {0, 1}, prob [N]."""
  if select_by == "auc":
    return metrics.binary_metrics(val["label"], val["prob"])["auc"]
  if select_by == "loss":
    return -float(log_loss(val["label"], np.clip(val["prob"], 1e-7, 1 - 1e-7), labels=[0, 1]))
  raise ValueError(f"config.select_by must be one of {SELECT_BY}, got {select_by!r}")


def class_weights(counts: np.ndarray, strategy: str) -> np.ndarray:
  """Inverse class frequency (N / (2·n_c)) for `weighted`, ones otherwise."""
  if strategy != "weighted":
    return np.ones(2, np.float32)
  return (counts.sum() / (2.0 * np.maximum(counts, 1))).astype(np.float32)


# ----------------------------------------------------------------- steps
def weighted_loss(logits, label, weights):
  """Σ w[y]·CE / Σ w[y] over the batch. logits [B, 2], label [B], weights [2]."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, label)
  w = jnp.asarray(weights)[label]
  return jnp.sum(w * ce) / jnp.sum(w)


def train_step(state: ClsState, batch, *, model, tx, weights):
  def loss_fn(params):
    logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                                  batch["image"], train=True, mutable=["batch_stats"])
    return weighted_loss(logits, batch["label"], weights), (logits, updates["batch_stats"])

  (loss, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  step_metrics = {"train/loss": loss,
                  "train/accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
                  "train/grad_norm": optax.global_norm(grads)}
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       batch_stats=stats, opt_state=opt_state), step_metrics


def predict_step(state: ClsState, image, *, model):
  logits = model.apply({"params": state.params, "batch_stats": state.batch_stats}, image,
                       train=False)
  return jax.nn.softmax(logits, -1)[:, 1]


# ----------------------------------------------------------------- prediction
def _encode_ids(ids, n: int) -> np.ndarray:
  out = np.zeros((n, ID_BYTES), np.uint8)
  for i, nodule_id in enumerate(ids):
    raw = nodule_id if isinstance(nodule_id, bytes) else str(nodule_id).encode()
    if len(raw) > ID_BYTES:
      raise ValueError(f"nodule id longer than {ID_BYTES} bytes: {raw!r}")
    out[i, :len(raw)] = np.frombuffer(raw, np.uint8)
  return out


def _decode_ids(codes: np.ndarray) -> list[str]:
  return [bytes(row).rstrip(b"\0").decode() for row in codes]


def predict(predict_fn, batches, num_batches: int, local_batch: int, mesh) -> dict:
  """Malignant probabilities of every patch, gathered from every host, sorted by nodule id.

  batches: this host's batches (image, label, nodule_id; the last may be short, and a host
  with fewer batches is padded); num_batches: the most any host has, so that every host
  runs the same jit'd steps. Padded rows carry a validity mask and are dropped after the
  gather. Returns {nodule_id: [str], label: [N], prob: [N]} on every host.
  """
  parts = {"prob": [], "label": [], "id": [], "valid": []}
  empty = {"image": np.zeros((0, *INPUT_SHAPE), np.float32), "label": np.zeros(0, np.int32),
           "nodule_id": np.zeros(0, object)}
  it = iter(batches)
  for _ in range(num_batches):
    batch = next(it, empty)
    n, pad = len(batch["label"]), local_batch - len(batch["label"])
    image = np.concatenate([batch["image"], np.zeros((pad, *INPUT_SHAPE), np.float32)])
    prob = predict_fn(to_global({"image": image}, mesh)["image"])
    local = {"label": np.pad(batch["label"], (0, pad)), "id": _encode_ids(batch["nodule_id"], local_batch),
             "valid": np.arange(local_batch) < n}
    gathered = multihost_utils.process_allgather(local)          # leaves [P, local_batch, ...]
    parts["prob"].append(np.asarray(multihost_utils.process_allgather(prob, tiled=True)))
    for k, v in gathered.items():
      parts[k].append(np.asarray(v).reshape(-1, *np.asarray(v).shape[2:]))
  if not parts["prob"]:
    return dict(nodule_id=[], label=np.zeros(0, int), prob=np.zeros(0))
  valid = np.concatenate(parts["valid"])
  ids = np.array(_decode_ids(np.concatenate(parts["id"])[valid]))
  order = np.argsort(ids, kind="stable")
  return dict(nodule_id=ids[order].tolist(),
              label=np.concatenate(parts["label"])[valid][order].astype(int),
              prob=np.concatenate(parts["prob"])[valid][order].astype(float))


def predict_split(predict_fn, data_dir: str, split: str, global_batch_size: int, mesh) -> dict:
  """`predict` over one split of a shard folder."""
  local_batch = global_batch_size // jax.process_count()
  n_local = input_pipeline.host_size(data_dir, split)
  n_max = int(np.max(multihost_utils.process_allgather(np.array(n_local))))
  batches = tfds.as_numpy(input_pipeline.eval_batches(data_dir, split, global_batch_size))
  return predict(predict_fn, batches, -(-n_max // local_batch), local_batch, mesh)


def evaluate(val: dict, test: dict, n_boot: int, seed: int) -> dict:
  """Test metrics at 0.5 and at the validation Youden threshold, with CIs."""
  youden = metrics.youden_threshold(val["label"], val["prob"])
  out = {"val_auc": metrics.binary_metrics(val["label"], val["prob"])["auc"],
         "youden_threshold": youden, "n_test": int(len(test["label"])),
         "n_test_malignant": int(test["label"].sum())}
  for name, t in (("at_0.5", 0.5), ("at_youden", youden)):
    point = metrics.binary_metrics(test["label"], test["prob"], t)
    ci = metrics.bootstrap_ci(test["label"], test["prob"], t, n=n_boot, seed=seed)
    out[name] = {m: {"value": point[m], "ci95": list(ci[m])} for m in metrics.METRICS}
  return out


# ----------------------------------------------------------------- the loop
def init_state(rng, model, tx) -> ClsState:
  """A fresh state: the model's variables on a [1, *INPUT_SHAPE] input, the optimiser's."""
  variables = model.init(rng, jnp.zeros((1, *INPUT_SHAPE)), train=False)
  return ClsState(jnp.zeros((), jnp.int32), variables["params"], variables["batch_stats"],
                  tx.init(variables["params"]))


def _create_state(config, model, tx, mesh, checkpointer):
  """(state, abstract state, sharding): restored, or initialised (from `init_from` if set)."""
  init = functools.partial(init_state, model=model, tx=tx)
  abstract = jax.eval_shape(init, jax.random.PRNGKey(config.seed))
  sharding = jax.tree.map(lambda _: replicated(mesh), abstract)
  if checkpointer.latest_step() is not None:
    state = checkpointer.restore(abstract_with_shardings(abstract, sharding))
    print(f"Resuming from the checkpoint at step {int(state.step)} in {checkpointer.directory}")
    return state, abstract, sharding
  state = jax.jit(init, out_shardings=sharding)(jax.random.PRNGKey(config.seed))
  if config.init_from:
    with Checkpointer(config.init_from) as pretrained:
      variables = pretrained.restore(abstract_with_shardings(
          {"params": abstract.params, "batch_stats": abstract.batch_stats},
          {"params": sharding.params, "batch_stats": sharding.batch_stats}))
    state = state.replace(params=variables["params"], batch_stats=variables["batch_stats"])
  return state, abstract, sharding


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, keeps the best-on-validation checkpoint, evaluates it on test.

  Writes metrics.json and predictions_{validation,test}.csv (process 0); returns the metrics
  with the predictions ("validation", "test") and the selected checkpoint's state ("state").
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = make_mesh(config.num_devices or None)
  dirs = data_dirs(config)
  counts = input_pipeline.label_counts(dirs)
  weights = class_weights(counts, config.strategy)
  steps_per_epoch = max(int(counts.sum()) // config.batch_size, 1)
  total = config.epochs * steps_per_epoch
  model = resnet3d.create(config.arch, 2, jnp.dtype(config.model_dtype))
  warmup = min(config.optim.warmup_epochs * steps_per_epoch, total // 2)
  tx = make_optimizer(config.optim, total, warmup, config.on_nonfinite == "skip",
                      config.batch_size)
  checkpointer = Checkpointer(workdir / "checkpoints", config.keep_checkpoints)
  best = Checkpointer(workdir / "best", 1)
  state, abstract, sharding = _create_state(config, model, tx, mesh, checkpointer)
  step_fn = jax.jit(functools.partial(train_step, model=model, tx=tx, weights=weights),
                    in_shardings=(sharding, {k: batch_sharding(mesh) for k in ("image", "label")}),
                    out_shardings=(sharding, replicated(mesh)), donate_argnums=(0,))
  predict_fn = jax.jit(functools.partial(predict_step, model=model),
                       in_shardings=(sharding, batch_sharding(mesh)))
  evaluate_split = lambda s, split: predict_split(functools.partial(predict_fn, s), dirs[0],
                                                  split, config.eval_batch_size, mesh)

  start = int(state.step)
  ds = input_pipeline.train_stream(dirs, config.batch_size, seed=config.seed,
                                   aug=input_pipeline.Augment.from_config(config.data),
                                   start=start * config.batch_size)
  batches = input_pipeline.global_batches(ds, mesh, ("image", "label"))
  writer = metric_writers.create_default_writer(str(workdir), just_logging=jax.process_index() > 0)
  best_file = workdir / "best.json"
  saved = json.loads(best_file.read_text()) if best_file.exists() else {}
  same_rule = saved.get("select_by", "auc") == config.select_by   # older runs: AUC only
  best_score = saved.get("score", saved.get("val_auc", -np.inf)) if same_rule else -np.inf
  print(f"{config.arch}, strategy {config.strategy}: {counts[0]} benign / {counts[1]} malignant "
        f"training patches, class weights {weights.round(3).tolist()}, "
        f"{steps_per_epoch} steps/epoch")
  progress = Progress(start, total)
  guard = NonFiniteGuard(config, checkpointer)
  for step in range(start + 1, total + 1):
    state, step_metrics = step_fn(state, next(batches))
    if step % config.log_every == 0 or step % steps_per_epoch == 0:
      step_metrics = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
      step_metrics.update(guard(step_metrics, step, state.opt_state))
      writer.write_scalars(step, step_metrics)
    if step % steps_per_epoch == 0:
      epoch = step // steps_per_epoch
      val = evaluate_split(state, "validation")
      auc = metrics.binary_metrics(val["label"], val["prob"])["auc"]
      writer.write_scalars(step, {"validation/auc": auc})
      rate = progress.rate(step)
      print(f"epoch {epoch}/{config.epochs} step {step} | loss {step_metrics['train/loss']:.4f} | "
            f"val AUC {auc:.4f} | {rate:.2f} steps/s | ETA {progress.eta(step, rate)}",
            flush=True)
      score = auc if config.select_by == "auc" else selection_score(val, config.select_by)
      if np.isfinite(score) and score > best_score:
        best_score = score
        best.save(step, state)
        if jax.process_index() == 0:
          atomic.write_text(best_file, json.dumps({"score": score, "select_by": config.select_by,
                                                   "val_auc": auc, "step": step, "epoch": epoch}))
      checkpointer.save(step, state)
  writer.flush()
  checkpointer.close()

  # ---- evaluation of the checkpoint with the best validation score
  if best.latest_step() is None:
    raise RuntimeError(f"no best checkpoint in {best.directory} (no finite validation "
                       f"{config.select_by}: does the validation split hold both classes?)")
  state = best.restore(abstract_with_shardings(abstract, sharding))
  best.close()
  val, test = evaluate_split(state, "validation"), evaluate_split(state, "test")
  result = evaluate(val, test, config.bootstrap, config.seed)
  result.update(arch=config.arch, strategy=config.strategy, seed=config.seed,
                selected_step=int(state.step))
  if jax.process_index() == 0:
    metrics.write_predictions(workdir / "predictions_validation.csv", val)
    metrics.write_predictions(workdir / "predictions_test.csv", test)
    atomic.write_text(workdir / "metrics.json", json.dumps(result, indent=1))
  t = result["at_0.5"]
  print(f"test: ACC {t['acc']['value']:.4f} SEN {t['sen']['value']:.4f} "
        f"SPE {t['spe']['value']:.4f} AUC {t['auc']['value']:.4f} "
        f"(95% CI {t['auc']['ci95'][0]:.3f}-{t['auc']['ci95'][1]:.3f}); wrote {workdir}/metrics.json")
  return {**result, "validation": val, "test": test, "state": state}
