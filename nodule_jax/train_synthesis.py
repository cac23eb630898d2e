"""Training the class-aware in-painting GAN (one linear trainer).

Per generator step: `n_critic` critic steps (D_local and D_global, WGAN-GP + aux L_cls),
then one generator step (L_recon on G1 and G2, -L_adv, aux L_cls). Both are pure jit'd
functions over a 'data' mesh: parameters replicated, batches split, state donated.
The in-painting pass itself lives in `nodule_jax.inpaint`, what each sample asks for in
`nodule_jax.gan_requests`.
"""
from __future__ import annotations

import functools
import json
import math
import pathlib
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from clu import metric_writers
from jax.experimental import multihost_utils

from nodule_jax import atomic, figures, input_pipeline, losses
from nodule_jax.checkpoint import Checkpointer, abstract_with_shardings
from nodule_jax.gan_requests import class_stats, draw_requests, rating_match
from nodule_jax.inpaint import (CONFIG_FILE, GanModels, build_models, check_config, crop_batch,
                                inpaint, inpaint_hole, other_noise, requested_hole_voxels,
                                working_shape)
from nodule_jax.masks import crop_boxes
from nodule_jax.nodule_ratings import rating_names
from nodule_jax.optimizers import make_optimizer
from nodule_jax.rng import Stream, stream_key
from nodule_jax.sharding import batch_sharding, make_mesh, replicated
from nodule_jax.training import NonFiniteGuard, Progress

BATCH_KEYS = ("image", "mask", "label", "diameter_mm")


def batch_keys(config) -> tuple[str, ...]:
  """The batch entries a GAN's steps read: BATCH_KEYS, and the ratings where it is
  conditioned on them."""
  return BATCH_KEYS + (("ratings",) if rating_names(config) else ())


@flax.struct.dataclass
class GanState:
  step: jax.Array      # generator steps done
  d_step: jax.Array    # critic steps done
  g_params: Any
  d_params: Any        # {"local": ..., "global": ...}
  g_average: Any       # the exponential moving average of g_params (`ema_decay`): what
                       # synthesis, evaluation and figures use
  g_opt: Any
  d_opt: Any


# ----------------------------------------------------------------- construction
def make_optimizers(config) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
  """(generator, critic) optimisers."""
  tx = lambda per_step: make_optimizer(config.optim, config.num_steps * per_step,
                                       config.optim.warmup_steps * per_step,
                                       config.on_nonfinite == "skip", config.batch_size)
  return tx(1), tx(config.n_critic)  # the critic updates n_critic times a step


def init_state(rng, config, models: GanModels, tx_g, tx_d, batch_size: int = 1) -> GanState:
  """Fresh parameters and optimiser states (use under jax.eval_shape / jit)."""
  k_g, k_l, k_gl = jax.random.split(rng, 3)
  n_in = 3 + bool(config.model.size_conditioning) + len(rating_names(config))
  shape = working_shape(config)
  x = jnp.zeros((batch_size, *shape, 1))
  label = jnp.zeros((batch_size,), jnp.int32)
  g_params = models.generator.init(k_g, jnp.zeros((batch_size, *shape, n_in)), x, x)["params"]
  local_input = jnp.zeros((batch_size, *config.model.local_box, 1))
  d_params = {"local": models.local.init(k_l, local_input, label)["params"],
              "global": models.global_.init(k_gl, x, label)["params"]}
  return GanState(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), g_params, d_params,
                  jax.tree.map(jnp.array, g_params),   # a copy: the state is donated
                  tx_g.init(g_params), tx_d.init(d_params))


def critic_fns(config, models: GanModels, d_params, box_start):
  """{name: (image [B, D, H, W, 1], label [B]) -> (wgan [B], aux [B, 3])} for both critics.

  D_local sees each sample's box at corner `box_start` [B, 3] (it holds the hole), D_global
  the whole working shape; the class reaches the WGAN head by projection, not as a channel."""
  box = tuple(config.model.local_box)
  return {
      "local": lambda x, y: models.local.apply({"params": d_params["local"]},
                                               crop_boxes(x, box_start, box), y),
      "global": lambda x, y: models.global_.apply({"params": d_params["global"]}, x, y),
  }


def augmentation(config) -> input_pipeline.Augment:
  """The training stream's augmentation; scaling keeps every nodule within
  `mask.max_diameter_mm` (the largest hole the local critic's box holds)."""
  return input_pipeline.Augment.from_config(config.data, config.mask.max_diameter_mm)


def cls_weight(step, config) -> jax.Array:
  """The generator's L_cls weight: 0 before `cls_start_step`, then a linear ramp to 1 over
  `cls_ramp_steps` (> 0 from cls_start_step on)."""
  ramp = max(config.loss.cls_ramp_steps, 1)
  return jnp.clip((step - config.loss.cls_start_step + 1) / ramp, 0.0, 1.0)


# ----------------------------------------------------------------- losses
def critic_loss(d_params, g_params, batch, rng, step, config, models, stats=None):
  """L_D of both critics: -L_adv (with the gradient penalty) + λ_cls^D·L_cls.

  Fakes are in-painted for the requested classes (a share of them counterfactual, sized
  from `stats.diameters`, see `gan_requests.requested_diameters`); the aux head learns
  real benign / real malignant / fake from step 0.
  """
  del step
  k_gen, k_gp, k_request = jax.random.split(rng, 3)
  real, label = batch["image"], batch["label"]
  requested, diameter, hole_diameter, ratings = draw_requests(k_request, batch, config, stats)
  out = inpaint(config, models, g_params, batch, k_gen, requested, diameter, hole_diameter,
                ratings)
  fake = jax.lax.stop_gradient(out["fake"])
  total, metrics = 0.0, {}
  for i, (name, critic) in enumerate(critic_fns(config, models, d_params, out["box"]).items()):
    d_real, aux_real = critic(real, label)
    d_fake, aux_fake = critic(fake, requested)
    wgan = losses.wgan_critic(d_real, d_fake)
    gp = losses.gradient_penalty(lambda x: critic(x, label)[0], real, fake,
                                 jax.random.fold_in(k_gp, i))
    cls = (losses.aux_ce(aux_real, losses.real_classes(label))
           + losses.aux_ce(aux_fake, jnp.full(label.shape, losses.FAKE)))
    total = total + wgan + config.loss.lambda_gp * gp + config.loss.lambda_cls_d * cls
    metrics.update({f"critic/wdist_{name}": -wgan, f"critic/gp_{name}": gp,
                    f"critic/cls_{name}": cls})
  metrics["critic/loss"] = total
  return total, metrics


def generator_loss(g_params, d_params, batch, rng, step, config, models, stats=None):
  """L_G = -L_adv + λ_cls^G·L_cls + λ_recon·(L_recon(G1) + L_recon(G2)) + λ_hole·L_hole
  + λ_hist·L_hist + λ_size·L_size + λ_rough·L_rough + λ_ms·L_ms.

  A share `loss.counterfactual` of the samples asks for the other class (at a size of that
  class with `stats.diameters`): their hole has no target (L_recon only outside it); the critics and
  L_cls say what that class looks like.
  L_hole (not in the paper) matches, per requested class, the batch's average hole
  intensity statistics (`losses.hole_moments`) to those of its real patches of that class
  (each in the hole of its own nodule's size). With `counterfactual_diameter="class"` a
  counterfactual fake's hole also holds its background's nodule, so it may be larger than
  its requested size ("covering" sizes never are): its target shares of
  dense voxels then shrink by the share of the hole the requested size's own would fill
  (`losses.in_requested_terms`), so "benign, 8 mm" in a 20 mm hole is asked for an 8 mm
  nodule's dense voxels, not for a hole as dense as an 8 mm nodule's own.
  L_hist (neither) is the 1D Wasserstein distance between the hole's intensities and its
  real nodule's, for the samples asked for their own class
  (`losses.hole_histogram_distance`), plus, with `stats.quantiles`, that between a
  counterfactual request's hole and training nodules of its class and size (their averaged
  quantile functions, `losses.hole_quantile_distance`) where its size sized the hole; in
  both, each hole's densest fifth counts 1 + `loss.histogram_core_weight` times.
  L_size (neither; with `stats.moments`) pulls each sample, in the same terms, to the
  statistics of training nodules of the requested class and size
  (`losses.size_matched_moments`): "benign, 18 mm" as bright as large benign nodules are.
  Both size-matched targets count each nodule of the other class
  `loss.size_target_other_class` as much (0: not at all), so a size where the requested
  class has few training nodules borrows from the other's; for a GAN conditioned on
  ratings (`model.ratings`) they favour the nodules rated as the request
  (`gan_requests.rating_match`).
  L_rough (neither) is each hole's finest-scale energy above the real nodules' average
  (`losses.roughness_excess`): the intensity terms count dense voxels, not where they are,
  and alternating voxels would meet them as well as a solid nodule.
  L_ms (neither; Mao et al. 2019) in-paints the batch again with other noise and rewards
  the two for differing (`losses.mode_seeking`): against one average nodule per request.
  """
  k_gen, k_request = jax.random.split(rng)
  real, label = batch["image"], batch["label"]
  requested, diameter, hole_diameter, ratings = draw_requests(k_request, batch, config, stats)
  out = inpaint(config, models, g_params, batch, k_gen, requested, diameter, hole_diameter,
                ratings)
  factual = (requested == label).astype(jnp.float32)
  r1 = losses.recon_l1(out["x1"], real, out["mask"], config.loss.lambda_global, factual)
  r2 = losses.recon_l1(out["x2"], real, out["mask"], config.loss.lambda_global, factual)
  cls_w = cls_weight(step, config) * config.loss.lambda_cls_g
  adv_total, cls_total, metrics = 0.0, 0.0, {}
  for name, critic in critic_fns(config, models, d_params, out["box"]).items():
    d_fake, aux_fake = critic(out["fake"], requested)
    adv = -jnp.mean(d_fake)
    cls = losses.aux_ce(aux_fake, losses.real_classes(requested))
    adv_total, cls_total = adv_total + adv, cls_total + cls
    metrics.update({f"generator/adv_{name}": adv, f"generator/cls_{name}": cls})
  own_hole = inpaint_hole(config, batch, k_gen).mask   # the real nodule's own-size hole
  other_class = config.loss.size_target_other_class
  match = rating_match(stats, ratings, config)
  fake_moments = losses.hole_moments(out["fake"], out["mask"])
  fraction = losses.requested_fraction(
      out["mask"], requested_hole_voxels(config, diameter, real.shape[1:4]),
      diameter < jnp.maximum(hole_diameter, batch["diameter_mm"]))
  moments = losses.class_moment_matching(fake_moments, requested,
                                         losses.hole_moments(real, own_hole), label, fraction)
  rough = (losses.roughness_excess(losses.roughness(out["fake"], out["mask"]),
                                   losses.roughness(real, own_hole))
           if config.loss.lambda_roughness else 0.0)   # two blurs: only when asked for
  total = (adv_total + cls_w * cls_total + config.loss.lambda_recon * (r1 + r2)
           + config.loss.lambda_hole_moments * moments + config.loss.lambda_roughness * rough)
  metrics.update({"generator/recon_g1": r1, "generator/recon_g2": r2,
                  "generator/hole_moments": moments, "generator/roughness": rough})
  if config.loss.lambda_hole_histogram:   # a sort of every hole: only when asked for
    fake_values = losses.sorted_in_hole(out["fake"], out["mask"])
    core_weight = config.loss.histogram_core_weight
    histogram = losses.hole_histogram_distance(
        fake_values, losses.sorted_in_hole(real, out["mask"]), factual, core_weight)
    if stats is not None and stats.quantiles is not None:
      target = losses.size_matched_moments(jnp.asarray(stats.quantiles), requested, diameter,
                                           other_class=other_class, extra_logits=match)
      sized_counterfactual = (1.0 - factual) * (fraction >= 1.0)
      by_class = losses.hole_quantile_distance(fake_values, target, sized_counterfactual,
                                               core_weight)
      metrics["generator/hole_histogram_class"] = by_class
      histogram = histogram + by_class
    total = total + config.loss.lambda_hole_histogram * histogram
    metrics["generator/hole_histogram"] = histogram
  if stats is not None and stats.moments is not None:
    target, weight = losses.in_requested_terms(losses.size_matched_moments(
        jnp.asarray(stats.moments), requested, diameter, other_class=other_class,
        extra_logits=match), fraction)
    size_term = losses.sample_moment_matching(fake_moments, target, weight)
    total = total + config.loss.lambda_hole_sized * size_term
    metrics["generator/hole_sized"] = size_term
  if config.loss.lambda_mode_seeking:   # a second generator pass: only when asked for
    other = inpaint(config, models, g_params, batch, k_gen, requested, diameter, hole_diameter,
                    ratings, noise_rng=other_noise(k_gen))
    seeking = losses.mode_seeking(out["fake"], other["fake"], out["masked"], other["masked"],
                                  out["mask"])
    total = total + config.loss.lambda_mode_seeking * seeking
    metrics["generator/mode_seeking"] = seeking
  metrics["generator/loss"] = total
  return total, metrics


# ----------------------------------------------------------------- steps
def critic_step(state: GanState, batch, *, config, models, tx_d, stats=None):
  rng = stream_key(config.seed, Stream.CRITIC, state.d_step)
  (_, metrics), grads = jax.value_and_grad(critic_loss, has_aux=True)(
      state.d_params, state.g_params, batch, rng, state.step, config, models, stats)
  updates, d_opt = tx_d.update(grads, state.d_opt, state.d_params)
  metrics["critic/grad_norm"] = optax.global_norm(grads)
  return state.replace(d_params=optax.apply_updates(state.d_params, updates), d_opt=d_opt,
                       d_step=state.d_step + 1), metrics


def average_decay(step: jax.Array, decay: float) -> jax.Array:
  """The moving average's decay after `step` generator steps: min(decay, (1+t)/(10+t))
  (tf.train.ExponentialMovingAverage's num_updates), so the first steps' weights do not
  linger in a short run; 0 when `decay` is 0 (the average is the parameters)."""
  t = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def generator_step(state: GanState, batch, *, config, models, tx_g, stats=None):
  rng = stream_key(config.seed, Stream.GENERATOR, state.step)
  (_, metrics), grads = jax.value_and_grad(generator_loss, has_aux=True)(
      state.g_params, state.d_params, batch, rng, state.step, config, models, stats)
  updates, g_opt = tx_g.update(grads, state.g_opt, state.g_params)
  metrics["generator/grad_norm"] = optax.global_norm(grads)
  g_params = optax.apply_updates(state.g_params, updates)
  g_average = optax.incremental_update(g_params, state.g_average,
                                      1.0 - average_decay(state.step, config.ema_decay))
  return state.replace(g_params=g_params, g_average=g_average, g_opt=g_opt,
                       step=state.step + 1), metrics


def compile_steps(config, models, tx_g, tx_d, mesh, state_sharding, stats=None):
  """(critic_step, generator_step), jit'd with shardings and the state donated; `stats`
  (`gan_requests.ClassStats`): the training set's constants the losses read."""
  batch_sh = {k: batch_sharding(mesh) for k in batch_keys(config)}
  kw = dict(in_shardings=(state_sharding, batch_sh),
            out_shardings=(state_sharding, replicated(mesh)), donate_argnums=(0,))
  d = jax.jit(functools.partial(critic_step, config=config, models=models, tx_d=tx_d,
                                stats=stats), **kw)
  g = jax.jit(functools.partial(generator_step, config=config, models=models, tx_g=tx_g,
                                stats=stats), **kw)
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
def _gather(tree):
  """Batches span hosts: every process joins, each gets the whole batch."""
  return jax.tree.map(lambda x: multihost_utils.process_allgather(x, tiled=True), tree)


def _report(step, metrics, progress, writer, config) -> None:
  rate = progress.rate(step)
  writer.write_scalars(step, {**metrics, "steps_per_sec": rate})
  print(f"step {step}/{config.num_steps} | D {metrics['critic/loss']:.3f} "
        f"G {metrics['generator/loss']:.3f} recon {metrics['generator/recon_g2']:.4f} "
        f"W {metrics['critic/wdist_global']:.3f} | {rate:.2f} steps/s | "
        f"ETA {progress.eta(step, rate)}", flush=True)


def check_counterfactual(config) -> bool:
  """Whether any sample is asked for the other class; ValueError when `loss.counterfactual`
  is not a pair of shares in [0, 1], `loss.counterfactual_diameter` is not a known rule or
  `loss.counterfactual_own_size` is not a share."""
  shares = tuple(config.loss.counterfactual)
  if len(shares) != 2 or not all(0.0 <= share <= 1.0 for share in shares):
    raise ValueError(f"config.loss.counterfactual={shares}: expected the shares of benign and "
                     "of malignant samples asked for the other class, each in [0, 1], e.g. "
                     "--config.loss.counterfactual=0.5,0.5")
  if config.loss.counterfactual_diameter not in ("class", "covering", "same"):
    raise ValueError(f"config.loss.counterfactual_diameter={config.loss.counterfactual_diameter!r}:"
                     " expected 'class', 'covering' or 'same'")
  if not 0.0 <= config.loss.counterfactual_own_size <= 1.0:
    raise ValueError(f"config.loss.counterfactual_own_size={config.loss.counterfactual_own_size}:"
                     " expected the share of counterfactual requests at their own nodule's "
                     "size, in [0, 1]")
  return max(shares) > 0


_NONNEGATIVE_WEIGHTS = {"size_target_other_class": "0: the requested class's nodules alone",
                        "histogram_core_weight": "0: every voxel of a hole alike"}


def check_weights(config) -> None:
  """ValueError when an entry of `_NONNEGATIVE_WEIGHTS` in `config.loss` is not finite >= 0."""
  for key, meaning in _NONNEGATIVE_WEIGHTS.items():
    if not 0 <= config.loss[key] < math.inf:
      raise ValueError(f"config.loss.{key}={config.loss[key]}: expected a finite weight >= 0 "
                       f"({meaning})")


def check_oversample(config):
  """`data.oversample` as `train_stream`'s `repeat` (None when empty); ValueError when it
  is not (class 0 or 1, from diameter in mm, times an integer >= 1)."""
  rule = tuple(config.data.oversample)
  if not rule:
    return None
  if (len(rule) != 3 or rule[0] not in (0, 1) or rule[1] < 0 or rule[2] != int(rule[2])
      or rule[2] < 1):
    raise ValueError(f"config.data.oversample={rule}: expected (class 0 or 1, from diameter "
                     "in mm, times an integer >= 1), e.g. --config.data.oversample=0,12,4, "
                     "or () for none")
  return input_pipeline.oversampling(int(rule[0]), float(rule[1]), int(rule[2]))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> GanState:
  """Trains on the shards in `config.data.data_dir`, with checkpoints and resume; writes
  the config beside the checkpoints (`inpaint.load_generator` reads both)."""
  if not config.data.data_dir:
    raise ValueError("config.data.data_dir is empty: the entry points fill it (the phantom by "
                     "default); pass a shard folder")
  check_config(config)
  check_weights(config)
  counterfactual = check_counterfactual(config)
  repeat = check_oversample(config)
  stats = class_stats(config, counterfactual)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    atomic.write_text(workdir / CONFIG_FILE, json.dumps(config.to_dict(), indent=1))
  mesh = make_mesh(config.num_devices or None)
  models = build_models(config)
  tx_g, tx_d = make_optimizers(config)
  checkpointer = Checkpointer(workdir / "checkpoints", config.keep_checkpoints)
  state, state_sharding = create_state(config, models, tx_g, tx_d, mesh, checkpointer)
  start = int(state.step)
  if start:
    print(f"Resuming from the checkpoint at step {start} in {checkpointer.directory}")
  d_step, g_step = compile_steps(config, models, tx_g, tx_d, mesh, state_sharding, stats)

  max_diameter = config.mask.max_diameter_mm
  ds = input_pipeline.train_stream(config.data.data_dir, config.batch_size, seed=config.seed,
                                   aug=augmentation(config),
                                   start=start * (config.n_critic + 1) * config.batch_size,
                                   keep=lambda ex: ex["diameter_mm"] <= max_diameter,
                                   repeat=repeat)
  shape = working_shape(config)
  batches = input_pipeline.global_batches(ds.map(lambda b: crop_batch(b, shape)), mesh,
                                          batch_keys(config))
  writer = metric_writers.create_default_writer(str(workdir), just_logging=jax.process_index() > 0)
  if start == 0:
    writer.write_hparams({k: str(v) for k, v in config.to_dict().items() if k != "data"})
  inpaint_fn = jax.jit(functools.partial(inpaint, config, models))

  progress = Progress(start, config.num_steps)
  guard = NonFiniteGuard(config, checkpointer)
  for step in range(start + 1, config.num_steps + 1):
    for _ in range(config.n_critic):
      state, d_metrics = d_step(state, next(batches))
    batch = next(batches)
    state, g_metrics = g_step(state, batch)
    metrics = {k: float(v) for k, v in jax.device_get({**d_metrics, **g_metrics}).items()}
    metrics.update(guard(metrics, step, (state.g_opt, state.d_opt)))
    if step % config.log_every == 0 or step == config.num_steps:
      _report(step, metrics, progress, writer, config)
    if step % config.image_every == 0 or step == config.num_steps:
      out = inpaint_fn(state.g_average, batch, stream_key(config.seed, Stream.SUMMARY, step))
      writer.write_images(step, figures.inpainting_summary(_gather(out), _gather(batch)))
    if step % config.checkpoint_every == 0 or step == config.num_steps:
      checkpointer.save(step, state)
  writer.flush()
  checkpointer.close()
  return state
