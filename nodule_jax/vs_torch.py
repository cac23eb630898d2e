"""JAX and PyTorch on the same networks with the same weights, timed alternately in one
process (`experiments.benchmark --vs-torch`; torch is the optional extra).

Each workload is a `Pair`: one training step per framework, the same function (loss, Adam
update) on the same batch, after a correctness guard that the two networks' outputs agree.
"""
from __future__ import annotations

import dataclasses
import resource
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nodule_jax import losses
from nodule_jax.inpaint import centre_box
from nodule_jax.models.critic import Critic

GP_WEIGHT = 10.0
LR = 1e-4


@dataclasses.dataclass
class Pair:
  """One workload in both frameworks: each `step` runs one update and returns something to
  wait on; `flops` is XLA's count for the JAX step."""
  name: str
  jax_step: Callable[[], Any]
  torch_step: Callable[[], Any]
  flops: float
  compile_s: float
  max_difference: float  # the correctness guard's largest |JAX - PyTorch| output difference
  loss_tol: float = 1e-3  # how far the first losses may differ (relative)
  hlo: str = ""           # the JAX step's compiled HLO text (for `op_profile`)


def _check_close(name: str, ours, theirs, tol: float = 1e-4) -> float:
  """Largest |ours - theirs| relative to the outputs' scale; AssertionError above `tol`."""
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  diff = float(np.max(np.abs(ours - theirs)) / max(1.0, float(np.max(np.abs(ours)))))
  if not diff <= tol:
    raise AssertionError(f"{name}: JAX and PyTorch outputs differ by {diff:.2e} (> {tol:g}): "
                         "the twins do not compute the same function")
  return diff


def xla_cost(compiled, key: str = "flops") -> float:
  """One number of XLA's cost analysis of a compiled function ("flops", "bytes accessed")."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get(key, float("nan")))


def model_flops(compiled, make_jitted: Callable[[], Any], *args) -> float:
  """XLA's FLOP count of `compiled`; if it holds oneDNN custom calls (which count none), of
  the same function recompiled with XLA's convolutions: `make_jitted()` returns a fresh
  `jax.jit`, so that no trace made under another `layers.conv_impl` is reused."""
  from nodule_jax.models import layers, onednn
  if not any(target in compiled.as_text() for target in onednn.TARGETS.values()):
    return xla_cost(compiled)
  with layers.conv_impl("xla"):
    return xla_cost(make_jitted().lower(*args).compile())


def _jit_step(loss_fn, params, *args):
  """An Adam step on `loss_fn(params, *args)`, compiled; returns (run, flops, compile_s,
  the compiled HLO text)."""
  tx = optax.adam(LR)
  state = {"params": params, "opt": tx.init(params)}

  def make():
    def step(state, *args):
      loss, grads = jax.value_and_grad(loss_fn)(state["params"], *args)
      updates, opt = tx.update(grads, state["opt"], state["params"])
      return {"params": optax.apply_updates(state["params"], updates), "opt": opt}, loss
    return jax.jit(step, donate_argnums=(0,))

  start = time.perf_counter()
  compiled = make().lower(state, *args).compile()
  compile_s = time.perf_counter() - start
  holder = {"state": state}

  def run():
    holder["state"], loss = compiled(holder["state"], *args)
    return loss

  return run, model_flops(compiled, make, state, *args), compile_s, compiled.as_text()


def _torch_step(module, loss_fn):
  """An Adam step of `module` on `loss_fn()` (a scalar tensor)."""
  import torch
  opt = torch.optim.Adam(module.parameters(), lr=LR)

  def run():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    opt.step()
    return loss.detach()

  return run


# ----------------------------------------------------------------- the GAN's critics
def _critic_loss(apply, real, fake, label, eps):
  """WGAN + GP + aux CE of one critic, as in the GAN's critic step (fakes given).
  apply: (x, label) -> (wgan [B], aux [B, 3]); real, fake [B, D, H, W, 1]; eps [B]."""
  d_real, aux_real = apply(real, label)
  d_fake, aux_fake = apply(fake, label)
  e = eps.reshape(-1, 1, 1, 1, 1)
  x_hat = e * real + (1 - e) * fake
  grads = jax.grad(lambda x: jnp.sum(apply(x, label)[0]))(x_hat)
  norms = jnp.sqrt(jnp.sum(grads ** 2, axis=(1, 2, 3, 4)) + 1e-12)
  return (losses.wgan_critic(d_real, d_fake) + GP_WEIGHT * jnp.mean((norms - 1) ** 2)
          + losses.aux_ce(aux_real, losses.real_classes(label))
          + losses.aux_ce(aux_fake, jnp.zeros_like(label)))


def _torch_critic_loss(critic, real, fake, label, eps):
  import torch
  import torch.nn.functional as F
  d_real, aux_real = critic(real, label)
  d_fake, aux_fake = critic(fake, label)
  e = eps.reshape(-1, 1, 1, 1, 1)
  x_hat = (e * real + (1 - e) * fake).requires_grad_(True)
  grads, = torch.autograd.grad(critic(x_hat, label)[0].sum(), x_hat, create_graph=True)
  norms = torch.sqrt((grads ** 2).sum(dim=(1, 2, 3, 4)) + 1e-12)
  return (d_fake.mean() - d_real.mean() + GP_WEIGHT * ((norms - 1) ** 2).mean()
          + F.cross_entropy(aux_real, label + 1)
          + F.cross_entropy(aux_fake, torch.zeros_like(label)))


def _critics(config, key) -> tuple[Critic, dict, dict, tuple]:
  """The critic module, the global (working patch) and local (`model.local_box`) critics'
  parameters and PyTorch twins, and the crop [B, D, H, W, ...] -> the local critic's box."""
  from nodule_jax.inpaint import working_shape
  from nodule_jax.torch_twins import critic_from_flax
  shape, box = working_shape(config), tuple(config.model.local_box)
  shapes, widths = {"global": shape, "local": box}, tuple(config.model.critic_widths)
  critic = Critic(widths=widths)
  params = {name: critic.init(k, jnp.zeros((1, *s, 1)), jnp.zeros((1,), jnp.int32))["params"]
            for (name, s), k in zip(shapes.items(), jax.random.split(key))}
  twins = {name: critic_from_flax(params[name], s, widths) for name, s in shapes.items()}
  return critic, params, twins, (slice(None), *centre_box(shape, box))


def critic_pair(config, seed: int = 0) -> Pair:
  """The global critic on the working patch and the local one on `model.local_box`, one
  Adam step of both on (real, fake, label) at the config's batch size."""
  import torch

  from nodule_jax.inpaint import working_shape
  rng = np.random.default_rng(seed)
  b = config.batch_size
  real, fake = (rng.uniform(-1, 1, (b, *working_shape(config), 1)).astype(np.float32)
                for _ in range(2))
  label = rng.integers(0, 2, b).astype(np.int32)
  eps = rng.uniform(0, 1, b).astype(np.float32)
  flax_critic, params, twins, crop = _critics(config, jax.random.PRNGKey(seed))
  twins = torch.nn.ModuleDict(twins)

  def loss(p, real, fake, label, eps):
    return sum(_critic_loss(lambda x, y, n=name: flax_critic.apply({"params": p[n]}, x, y),
                            r, f, label, eps)
               for name, r, f in (("global", real, fake), ("local", real[crop], fake[crop])))

  t = lambda a: torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, 1)))
  t_real, t_fake, t_label = t(real), t(fake), torch.from_numpy(label.astype(np.int64))
  t_eps = torch.from_numpy(eps)

  def outputs(name, x):
    """[B, 4]: the WGAN score and the aux logits, from JAX and from PyTorch."""
    wgan, aux = flax_critic.apply({"params": params[name]}, x, label)
    t_wgan, t_aux = twins[name](t(x), t_label)
    return (np.concatenate([np.asarray(wgan)[:, None], np.asarray(aux)], 1),
            torch.cat([t_wgan[:, None], t_aux], 1).detach().numpy())

  diff = max(_check_close(f"critic ({name})", *outputs(name, x))
             for name, x in (("global", real), ("local", real[crop])))
  t_crop = (slice(None), *crop)          # [B, C, D, H, W]: the box on D, H, W
  torch_loss = lambda: sum(_torch_critic_loss(twins[name], r, f, t_label, t_eps)
                           for name, r, f in (("global", t_real, t_fake),
                                              ("local", t_real[t_crop], t_fake[t_crop])))
  run, flops, compile_s, hlo = _jit_step(loss, params, real, fake, label, eps)
  return Pair(f"critic step with GP (local + global), batch {b}", run,
              _torch_step(twins, torch_loss), flops, compile_s, diff, hlo=hlo)


# ----------------------------------------------------------------- the generator
def _generator_setup(config, seed: int):
  """The generator, its parameters and twin; the critics (`_critics`, frozen twins); a batch
  (numpy, channels-last: real [B, D, H, W, 1], mask, masked, inputs [B, D, H, W, 3 or 4],
  label [B]) and its PyTorch copy (channels-first)."""
  import torch

  from nodule_jax.inpaint import build_models, working_shape
  from nodule_jax.masks import generator_inputs, sphere_mask
  from nodule_jax.torch_twins import Generator
  rng = np.random.default_rng(seed)
  b, shape = config.batch_size, working_shape(config)
  real = rng.uniform(-1, 1, (b, *shape, 1)).astype(np.float32)
  label = rng.integers(0, 2, b).astype(np.int32)
  diameter = rng.uniform(4, config.mask.max_diameter_mm, b).astype(np.float32)
  mask = np.asarray(sphere_mask(shape, diameter / 2), np.float32)
  masked, inputs = (np.asarray(a) for a in generator_inputs(
      real, mask, label, jax.random.PRNGKey(seed),
      diameter if config.model.size_conditioning else None))
  if config.model.upsample != "subpixel":
    raise ValueError("the PyTorch twin of the generator has the sub-pixel up-sampling only "
                     f"(config.model.upsample={config.model.upsample!r})")
  generator = build_models(config).generator
  g_key, d_key = jax.random.split(jax.random.PRNGKey(seed))
  g_params = generator.init(g_key, inputs, mask, masked)["params"]
  twin = Generator(g_params, config.model.depth, config.model.dilations, config.model.attention)
  critic, d_params, critics, crop = _critics(config, d_key)
  for c in critics.values():
    c.requires_grad_(False)
  batch = dict(real=real, mask=mask, masked=masked, inputs=inputs, label=label)
  t = {k: torch.from_numpy(np.ascontiguousarray(np.moveaxis(v, -1, 1) if v.ndim == 5 else
                                                v.astype(np.int64))) for k, v in batch.items()}
  return generator, g_params, twin, critic, d_params, critics, batch, t, crop


def generator_pair(config, seed: int = 0) -> Pair:
  """One Adam step of G1 + G2 on the generator's loss against fixed critics: the hole's L1
  of both stages, the two critics' WGAN terms and aux cross-entropies on the composite."""
  import torch
  import torch.nn.functional as F
  generator, g_params, twin, critic, d_params, critics, batch, t, crop = _generator_setup(
      config, seed)

  def loss(g, real, mask, masked, inputs, label):
    x1, x2 = generator.apply({"params": g}, inputs, mask, masked)
    fake = x2 * mask + real * (1 - mask)
    total = jnp.mean(jnp.abs(x1 - real)) + jnp.mean(jnp.abs(x2 - real))
    for name, x in (("global", fake), ("local", fake[crop])):
      wgan, aux = critic.apply({"params": d_params[name]}, x, label)
      total = total - jnp.mean(wgan) + losses.aux_ce(aux, losses.real_classes(label))
    return total

  def torch_loss():
    x1, x2 = twin(t["inputs"], t["mask"], t["masked"])
    fake = x2 * t["mask"] + t["real"] * (1 - t["mask"])
    total = (x1 - t["real"]).abs().mean() + (x2 - t["real"]).abs().mean()
    for name, x in (("global", fake), ("local", fake[(slice(None), *crop)])):
      wgan, aux = critics[name](x, t["label"])
      total = total - wgan.mean() + F.cross_entropy(aux, t["label"] + 1)
    return total

  with torch.no_grad():
    ours = np.concatenate([np.asarray(x) for x in generator.apply(
        {"params": g_params}, batch["inputs"], batch["mask"], batch["masked"])], -1)
    theirs = torch.cat(twin(t["inputs"], t["mask"], t["masked"]), 1).numpy()
  diff = _check_close("generator (x1, x2)", ours, np.moveaxis(theirs, 1, -1))
  run, flops, compile_s, hlo = _jit_step(loss, g_params, *(batch[k] for k in (
      "real", "mask", "masked", "inputs", "label")))
  attention = "attention" if config.model.attention else "no attention"
  return Pair(f"generator step (G1 + G2, {attention}), batch {config.batch_size}", run,
              _torch_step(twin, torch_loss), flops, compile_s, diff, hlo=hlo)


def synthesis_pair(config, seed: int = 0) -> Pair:
  """In-painting one batch (G1 + G2 forward, no gradient), as `synthesize` runs it."""
  import torch
  generator, g_params, twin, *_, batch, t, _ = _generator_setup(config, seed)
  apply = lambda g, inputs, mask, masked: generator.apply(
      {"params": g}, inputs, mask, masked)[1]
  args = (batch["inputs"], batch["mask"], batch["masked"])
  start = time.perf_counter()
  compiled = jax.jit(apply).lower(g_params, *args).compile()
  compile_s = time.perf_counter() - start

  def torch_run():
    with torch.no_grad():
      return twin(t["inputs"], t["mask"], t["masked"])[1].mean()   # a scalar, as the steps

  diff = _check_close("synthesis", compiled(g_params, *args),
                      np.moveaxis(twin(t["inputs"], t["mask"], t["masked"])[1].detach().numpy(),
                                  1, -1))
  return Pair(f"synthesis batch (G1 + G2 forward), batch {config.batch_size}",
              lambda: jnp.mean(compiled(g_params, *args)), torch_run,
              model_flops(compiled, lambda: jax.jit(lambda *a: apply(*a)), g_params, *args),
              compile_s, diff, hlo=compiled.as_text())


# ----------------------------------------------------------------- the classifier
def classifier_pair(arch: str = "resnet-50", batch: int = 16, seed: int = 0) -> Pair:
  """Hara's 3D ResNet (random weights and BatchNorm statistics in the published format,
  ported by `port_kinetics`): one training step (BatchNorm in training mode, cross-entropy,
  Adam) on a batch of patches [batch, 32, 64, 64, 1]."""
  import torch
  import torch.nn.functional as F

  from data_prep.patches import PATCH_SHAPE
  from nodule_jax.port_kinetics import torch_to_flax
  from nodule_jax.torch_twins import build, randomise
  twin = randomise(build(arch, num_classes=2, in_channels=1), seed)
  model, variables = torch_to_flax({k: v.numpy() for k, v in twin.state_dict().items()}, arch)
  rng = np.random.default_rng(seed)
  image = rng.normal(size=(batch, *PATCH_SHAPE, 1)).astype(np.float32)
  label = rng.integers(0, 2, batch).astype(np.int32)
  t_image = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, -1, 1)))
  t_label = torch.from_numpy(label.astype(np.int64))
  with torch.no_grad():
    diff = _check_close(f"{arch} logits (eval mode)",
                        model.apply(variables, image[:2], train=False),
                        twin.eval()(t_image[:2]).numpy())
  stats = variables["batch_stats"]

  def loss(params, image, label):
    logits, _ = model.apply({"params": params, "batch_stats": stats}, image, train=True,
                            mutable=["batch_stats"])
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, label))

  twin.train()
  run, flops, compile_s, hlo = _jit_step(loss, variables["params"], image, label)
  return Pair(f"{arch} train step, batch {batch}", run,
              _torch_step(twin, lambda: F.cross_entropy(twin(t_image), t_label)), flops,
              compile_s, diff, hlo=hlo)


# ----------------------------------------------------------------- one convolution
def conv_pair(channels: int = 64, shape=(4, 16, 32, 32), dtype: str = "float32",
              seed: int = 0) -> Pair:
  """One 3×3×3 'same' conv, channels -> channels, forward and both gradients (of
  Σ y·probe) on x [*shape, channels]: `layers.conv3d` (the CPU default: oneDNN) against
  PyTorch's `conv3d`, in float32 or bfloat16 (operands and result; both accumulate in f32)."""
  import torch
  import torch.nn.functional as F

  from nodule_jax.models import layers
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(*shape, channels)).astype(np.float32)
  w = (rng.normal(size=(3, 3, 3, channels, channels)) / np.sqrt(27 * channels)).astype(np.float32)
  probe = rng.normal(size=(*shape, channels)).astype(np.float32)
  jdt, tdt = {"float32": (jnp.float32, torch.float32),
              "bfloat16": (jnp.bfloat16, torch.bfloat16)}[dtype]
  pad = ((1, 1),) * 3
  conv = lambda x, w: layers.conv3d(x, w, (1, 1, 1), pad)
  loss = lambda x, w, p: jnp.sum(conv(x, w).astype(jnp.float32) * p)
  make = lambda: jax.jit(jax.value_and_grad(loss, (0, 1)))
  args = (jnp.asarray(x, jdt), jnp.asarray(w, jdt), jnp.asarray(probe))
  start = time.perf_counter()
  compiled = make().lower(*args).compile()
  compile_s = time.perf_counter() - start
  to_t = lambda a, perm: torch.from_numpy(np.ascontiguousarray(a.transpose(perm)))
  t_x = to_t(x, (0, 4, 1, 2, 3)).to(tdt).requires_grad_()
  t_w = to_t(w, (4, 3, 0, 1, 2)).to(tdt).requires_grad_()
  t_probe = to_t(probe, (0, 4, 1, 2, 3))

  def torch_run():
    t_x.grad = t_w.grad = None
    out = (F.conv3d(t_x, t_w, padding=1).float() * t_probe).sum()
    out.backward()
    return out.detach()

  diff = _check_close("conv3d", np.asarray(jax.jit(conv)(*args[:2]), np.float32),
                      np.moveaxis(F.conv3d(t_x, t_w, padding=1).detach().float().numpy(), 1, -1),
                      tol=1e-4 if dtype == "float32" else 3e-2)
  return Pair(f"3×3×3 conv fwd + bwd, {channels} ch, {'×'.join(map(str, shape))}, {dtype}",
              lambda: compiled(*args)[0], torch_run,
              model_flops(compiled, make, *args), compile_s, diff,
              loss_tol=1e-3 if dtype == "float32" else 3e-2, hlo=compiled.as_text())


# ----------------------------------------------------------------- timing
def time_pair(pair: Pair, steps: int) -> dict:
  """Median seconds per step of each framework, alternating JAX and PyTorch steps after
  one warm-up step each (whose losses must agree: the same function on the same batch);
  with the guards' differences, FLOPs and peak RSS so far."""
  import torch
  loss_difference = _check_close(f"{pair.name}: first loss", pair.jax_step(),
                                 pair.torch_step().numpy(), tol=pair.loss_tol)
  times = {"jax": [], "torch": []}
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(pair.jax_step())
    times["jax"].append(time.perf_counter() - start)
    start = time.perf_counter()
    pair.torch_step()
    times["torch"].append(time.perf_counter() - start)
  median = {k: float(np.median(v)) for k, v in times.items()}
  return dict(name=pair.name, jax_s=median["jax"], torch_s=median["torch"],
              ratio=median["torch"] / median["jax"], gflop=pair.flops / 1e9,
              compile_s=pair.compile_s, max_difference=pair.max_difference,
              loss_difference=loss_difference,
              torch_threads=torch.get_num_threads(),
              peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)
