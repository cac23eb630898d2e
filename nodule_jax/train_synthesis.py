"""Training the class-aware in-painting GAN (one linear trainer).

Per generator step: `n_critic` critic steps (D_local and D_global, WGAN-GP + aux L_cls),
then one generator step (L_recon on G1 and G2, -L_adv, aux L_cls). Both are pure jit'd
functions over a 'data' mesh: parameters replicated, batches split, state donated.
"""
from __future__ import annotations

import functools
import pathlib
import time
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers
from jax.experimental import multihost_utils

from nodule_jax import input_pipeline as ip
from nodule_jax import losses
from nodule_jax.checkpoint import Checkpointer, abstract_with_shardings
from nodule_jax.masks import generator_inputs, random_mask
from nodule_jax.models.critic import Critic, centre_crop
from nodule_jax.models.generator import Generator
from nodule_jax.sharding import batch_sharding, make_mesh, replicated

FULL_PATCH = (32, 64, 64)
BATCH_KEYS = ("image", "label", "diameter_mm")


@flax.struct.dataclass
class GanState:
  step: jax.Array      # generator steps done
  d_step: jax.Array    # critic steps done
  g_params: Any
  d_params: Any        # {"local": ..., "global": ...}
  g_opt: Any
  d_opt: Any


class Models(NamedTuple):
  generator: Generator
  local: Critic
  global_: Critic


# ----------------------------------------------------------------- construction
def patch_shape(config) -> tuple[int, int, int]:
  """(D, H, W) the GAN works on: the full patch, or its centre crop `config.data.crop`."""
  crop = tuple(config.data.crop)
  return crop if all(crop) else FULL_PATCH


def crop_batch(batch: dict, shape) -> dict:
  """Centre-crops every [B, D, H, W, C] entry of a batch (numpy, jax or tf) to `shape`."""
  out = dict(batch)
  for k, v in batch.items():
    if len(v.shape) == 5:
      s = [(n - c) // 2 for n, c in zip(v.shape[1:4], shape)]
      out[k] = v[:, s[0]:s[0] + shape[0], s[1]:s[1] + shape[1], s[2]:s[2] + shape[2]]
  return out


def build_models(config: ml_collections.ConfigDict) -> Models:
  m = config.model
  dtype = jnp.dtype(m.dtype)
  critic = lambda: Critic(widths=tuple(m.critic_widths), dtype=dtype)
  return Models(Generator(width=m.width, depth=m.depth, dilations=tuple(m.dilations),
                          attention=m.attention, dtype=dtype), critic(), critic())


def make_optimizer(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
  lr = optim.lr
  if optim.warmup_steps:
    lr = optax.linear_schedule(0.0, optim.lr, optim.warmup_steps)
  adam = optax.adam(lr, b1=optim.b1, b2=optim.b2)
  return optax.chain(optax.clip_by_global_norm(optim.grad_clip), adam) if optim.grad_clip else adam


def init_state(rng, config, models: Models, tx_g, tx_d, batch_size: int = 1) -> GanState:
  """Fresh parameters and optimiser states (use under jax.eval_shape / jit)."""
  k_g, k_l, k_gl = jax.random.split(rng, 3)
  n_in = 4 if config.model.size_conditioning else 3
  shape = patch_shape(config)
  x = jnp.zeros((batch_size, *shape, 1))
  g_params = models.generator.init(k_g, jnp.zeros((batch_size, *shape, n_in)), x, x)["params"]
  d_params = {
      "local": models.local.init(k_l, centre_crop(jnp.zeros((batch_size, *shape, 2)),
                                                  config.model.local_box))["params"],
      "global": models.global_.init(k_gl, jnp.zeros((batch_size, *shape, 2)))["params"]}
  return GanState(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), g_params, d_params,
                  tx_g.init(g_params), tx_d.init(d_params))


# ----------------------------------------------------------------- forward pieces
def inpaint(config, models: Models, g_params, batch, rng, label=None):
  """Masks, noise, G1, G2. Returns dict of [B, D, H, W, 1]: mask, masked, x1, x2, fake
  (the final composite: G2 inside the mask, the real patch outside)."""
  k_mask, k_noise = jax.random.split(rng)
  image = batch["image"]
  label = batch["label"] if label is None else label
  mask = random_mask(k_mask, batch["diameter_mm"], image.shape[1:4], margin_mm=config.mask.margin_mm,
                     jitter=config.mask.jitter, shift_mm=config.mask.shift_mm)
  diameter = batch["diameter_mm"] if config.model.size_conditioning else None
  masked, inputs = generator_inputs(image, mask, label, k_noise, diameter)
  x1, x2 = models.generator.apply({"params": g_params}, inputs, mask, masked)
  return dict(mask=mask, masked=masked, x1=x1, x2=x2, fake=x2 * mask + image * (1 - mask))


def _with_label(image, label):
  """[B, D, H, W, 1] + label map channel (-1 benign, +1 malignant) -> [..., 2]."""
  lm = jnp.ones_like(image) * (2.0 * label.astype(image.dtype) - 1.0)[:, None, None, None, None]
  return jnp.concatenate([image, lm], -1)


def _critic_fns(config, models: Models, d_params, label):
  """{name: image [B, D, H, W, 1] -> (wgan [B], aux [B, 3])} for both critics."""
  box = tuple(config.model.local_box)
  return {
      "local": lambda x: models.local.apply({"params": d_params["local"]},
                                            centre_crop(_with_label(x, label), box)),
      "global": lambda x: models.global_.apply({"params": d_params["global"]},
                                               _with_label(x, label)),
  }


def _cls_weight(step, config):
  return (step >= config.loss.cls_start_step).astype(jnp.float32)


# ----------------------------------------------------------------- losses
def critic_loss(d_params, g_params, batch, rng, step, config, models):
  """L_D of both critics: -L_adv (with the gradient penalty) + λ_cls^D·L_cls."""
  k_gen, k_gp = jax.random.split(rng)
  fake = jax.lax.stop_gradient(inpaint(config, models, g_params, batch, k_gen)["fake"])
  real, label = batch["image"], batch["label"]
  cls_w = _cls_weight(step, config) * config.loss.lambda_cls_d
  total, metrics = 0.0, {}
  for i, (name, critic) in enumerate(_critic_fns(config, models, d_params, label).items()):
    d_real, aux_real = critic(real)
    d_fake, aux_fake = critic(fake)
    wgan = losses.wgan_critic(d_real, d_fake)
    gp = losses.gradient_penalty(lambda x: critic(x)[0], real, fake,
                                 jax.random.fold_in(k_gp, i))
    cls = (losses.aux_ce(aux_real, losses.real_classes(label))
           + losses.aux_ce(aux_fake, jnp.full(label.shape, losses.FAKE)))
    total = total + wgan + config.loss.lambda_gp * gp + cls_w * cls
    metrics.update({f"critic/wdist_{name}": -wgan, f"critic/gp_{name}": gp,
                    f"critic/cls_{name}": cls})
  metrics["critic/loss"] = total
  return total, metrics


def generator_loss(g_params, d_params, batch, rng, step, config, models):
  """L_G = -L_adv + λ_cls^G·L_cls + λ_recon·(L_recon(G1) + L_recon(G2))."""
  out = inpaint(config, models, g_params, batch, rng)
  real, label = batch["image"], batch["label"]
  r1 = losses.recon_l1(out["x1"], real, out["mask"], config.loss.lambda_global)
  r2 = losses.recon_l1(out["x2"], real, out["mask"], config.loss.lambda_global)
  cls_w = _cls_weight(step, config) * config.loss.lambda_cls_g
  adv_total, cls_total, metrics = 0.0, 0.0, {}
  for name, critic in _critic_fns(config, models, d_params, label).items():
    d_fake, aux_fake = critic(out["fake"])
    adv = -jnp.mean(d_fake)
    cls = losses.aux_ce(aux_fake, losses.real_classes(label))
    adv_total, cls_total = adv_total + adv, cls_total + cls
    metrics.update({f"generator/adv_{name}": adv, f"generator/cls_{name}": cls})
  total = adv_total + cls_w * cls_total + config.loss.lambda_recon * (r1 + r2)
  metrics.update({"generator/loss": total, "generator/recon_g1": r1,
                  "generator/recon_g2": r2})
  return total, metrics


# ----------------------------------------------------------------- steps
def _key(config, stream: int, step):
  return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed), stream), step)


def critic_step(state: GanState, batch, *, config, models, tx_d):
  rng = _key(config, 0, state.d_step)
  (_, metrics), grads = jax.value_and_grad(critic_loss, has_aux=True)(
      state.d_params, state.g_params, batch, rng, state.step, config, models)
  updates, d_opt = tx_d.update(grads, state.d_opt, state.d_params)
  metrics["critic/grad_norm"] = optax.global_norm(grads)
  return state.replace(d_params=optax.apply_updates(state.d_params, updates), d_opt=d_opt,
                       d_step=state.d_step + 1), metrics


def generator_step(state: GanState, batch, *, config, models, tx_g):
  rng = _key(config, 1, state.step)
  (_, metrics), grads = jax.value_and_grad(generator_loss, has_aux=True)(
      state.g_params, state.d_params, batch, rng, state.step, config, models)
  updates, g_opt = tx_g.update(grads, state.g_opt, state.g_params)
  metrics["generator/grad_norm"] = optax.global_norm(grads)
  return state.replace(g_params=optax.apply_updates(state.g_params, updates), g_opt=g_opt,
                       step=state.step + 1), metrics


def compile_steps(config, models, tx_g, tx_d, mesh, state_sharding):
  """(critic_step, generator_step), jit'd with shardings and the state donated."""
  batch_sh = {k: batch_sharding(mesh) for k in BATCH_KEYS}
  kw = dict(in_shardings=(state_sharding, batch_sh),
            out_shardings=(state_sharding, replicated(mesh)), donate_argnums=(0,))
  d = jax.jit(functools.partial(critic_step, config=config, models=models, tx_d=tx_d), **kw)
  g = jax.jit(functools.partial(generator_step, config=config, models=models, tx_g=tx_g), **kw)
  return d, g


def create_state(config, models, tx_g, tx_d, mesh, checkpointer: Checkpointer | None = None):
  """Shapes first, then a sharded init, or a restore of the latest checkpoint."""
  init = functools.partial(init_state, config=config, models=models, tx_g=tx_g, tx_d=tx_d)
  rng = jax.random.PRNGKey(config.seed)
  abstract = jax.eval_shape(init, rng)
  sharding = jax.tree.map(lambda _: replicated(mesh), abstract)
  if checkpointer is not None and checkpointer.latest_step() is not None:
    state = checkpointer.restore(abstract_with_shardings(abstract, sharding))
  else:
    state = jax.jit(init, out_shardings=sharding)(rng)
  return state, sharding


# ----------------------------------------------------------------- the loop
def _check_finite(metrics: dict, step: int, checkpointer: Checkpointer) -> None:
  bad = {k: v for k, v in sorted(metrics.items()) if not np.isfinite(v)}
  if bad:
    raise FloatingPointError(
        f"non-finite loss at step {step}: "
        + ", ".join(f"{k}={v}" for k, v in bad.items())
        + f". Stopping; the last good checkpoint (step {checkpointer.latest_step()}) is kept "
        f"in {checkpointer.directory}")


def _slices(x) -> np.ndarray:
  """[B, D, H, W, 1] -> [B, H, W] centre axial slices in [0, 1]."""
  x = np.asarray(x)
  return (np.clip(x[:, x.shape[1] // 2, ..., 0], -1, 1) + 1) / 2


def image_summary(out: dict, batch: dict) -> dict[str, np.ndarray]:
  """Per class: rows of [real | masked input | G1 | G2 composite] centre slices."""
  label = np.asarray(batch["label"])
  cols = [_slices(batch["image"]), _slices(out["masked"]),
          _slices(out["x1"] * out["mask"] + batch["image"] * (1 - out["mask"])),
          _slices(out["fake"])]
  images = {}
  for cls, name in enumerate(("benign", "malignant")):
    idx = np.flatnonzero(label == cls)[:4]
    if idx.size:
      grid = np.concatenate([np.concatenate([c[i] for c in cols], 1) for i in idx], 0)
      images[f"inpainting/{name}"] = grid[None, ..., None]
  return images


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> GanState:
  """Trains from the shards (the phantom by default), with checkpoints and resume."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = make_mesh(config.num_devices or None)
  models = build_models(config)
  tx_g, tx_d = make_optimizer(config.optim), make_optimizer(config.optim)
  checkpointer = Checkpointer(workdir / "checkpoints", config.keep_checkpoints)
  state, state_sharding = create_state(config, models, tx_g, tx_d, mesh, checkpointer)
  start = int(state.step)
  if start:
    logging.info("resumed from step %d", start)
    print(f"Resuming from the checkpoint at step {start} in {checkpointer.directory}")
  d_step, g_step = compile_steps(config, models, tx_g, tx_d, mesh, state_sharding)

  data_dir = config.data.data_dir
  if not data_dir:
    from data_prep.default_data import phantom_data_dir
    data_dir = str(phantom_data_dir())
  aug = ip.Augment(tuple(config.data.crop_pad), config.data.flip, config.data.scale)
  ds = ip.make_dataset(data_dir, config.data.split, config.batch_size, train=True,
                       seed=config.seed + 7919 * start, aug=aug)  # fresh order after resume
  shape = patch_shape(config)
  batches = ip.global_batches(
      ds.map(lambda b: crop_batch({k: b[k] for k in BATCH_KEYS}, shape)), mesh)
  writer = metric_writers.create_default_writer(str(workdir), just_logging=jax.process_index() > 0)
  if start == 0:
    writer.write_hparams({k: str(v) for k, v in config.to_dict().items() if k != "data"})
  show = jax.jit(functools.partial(inpaint, config, models))

  t0, last_t, last_step = time.time(), time.time(), start
  for step in range(start + 1, config.num_steps + 1):
    for _ in range(config.n_critic):
      state, d_metrics = d_step(state, next(batches))
    batch = next(batches)
    state, g_metrics = g_step(state, batch)
    metrics = {k: float(v) for k, v in jax.device_get({**d_metrics, **g_metrics}).items()}
    _check_finite(metrics, step, checkpointer)
    if step % config.log_every == 0 or step == config.num_steps:
      now = time.time()
      sps = (step - last_step) / max(now - last_t, 1e-9)
      metrics["steps_per_sec"] = sps
      writer.write_scalars(step, metrics)
      eta = (config.num_steps - step) / max(sps, 1e-9)
      print(f"step {step}/{config.num_steps} | D {metrics['critic/loss']:.3f} "
            f"G {metrics['generator/loss']:.3f} recon {metrics['generator/recon_g2']:.4f} "
            f"W {metrics['critic/wdist_global']:.3f} | {sps:.2f} steps/s | "
            f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}", flush=True)
      last_t, last_step = now, step
    if step % config.image_every == 0 or step == config.num_steps:
      out = show(state.g_params, batch, _key(config, 2, step))
      gather = lambda t: jax.tree.map(  # batches span hosts; gather them for the summary
          lambda x: multihost_utils.process_allgather(x, tiled=True), t)
      writer.write_images(step, image_summary(gather(out), gather(batch)))
    if step % config.checkpoint_every == 0 or step == config.num_steps:
      checkpointer.save(step, state)
  writer.flush()
  if jax.process_index() == 0 and config.num_steps > start:
    from nodule_jax.synthesis_figure import class_figure
    path = class_figure(config, models, state.g_params, data_dir, workdir / "inpainting.png")
    print(f"wrote {path} ({time.time() - t0:.0f} s)")
  checkpointer.close()
  return state
