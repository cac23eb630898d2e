"""The optimiser of both trainers, from a config's `optim` block.

optim: name ('adam' | 'adamw'), lr, b1, b2, weight_decay (adamw), schedule ('constant':
linear warm-up then constant; 'cosine': linear warm-up then cosine decay to 0), grad_clip
(global norm; 0 = off); lr_scaling ('none' | 'linear' | 'sqrt': lr × (effective batch /
base_batch_size), or its square root), base_batch_size (the batch `lr` was tuned for);
accumulate (k: each update averages the gradients of k batches, `optax.MultiSteps`, so the
effective batch is k × the batch; steps and schedules count batches).

With `skip_nonfinite` the update is wrapped in `optax.apply_if_finite`: a step whose
gradients hold a NaN or Inf changes neither the parameters nor the optimiser's moments, and
the state counts such steps (`skipped_updates`); the trainer decides when to stop.
"""
from __future__ import annotations

import jax
import ml_collections
import optax


def learning_rate(optim: ml_collections.ConfigDict, total_steps: int, warmup_steps: int):
  """A float (constant, no warm-up) or an optax schedule."""
  if optim.schedule == "cosine":
    warmup_steps = max(warmup_steps, 1)
    return optax.warmup_cosine_decay_schedule(0.0, optim.lr, warmup_steps,
                                              max(total_steps, warmup_steps + 1))
  if optim.schedule == "constant":
    return optax.linear_schedule(0.0, optim.lr, warmup_steps) if warmup_steps else optim.lr
  raise ValueError(f"unknown optim.schedule {optim.schedule!r}: constant or cosine")


LR_SCALING = ("none", "linear", "sqrt")


def scaled_lr(optim: ml_collections.ConfigDict, batch_size: int) -> float:
  """optim.lr scaled to the effective batch (batch_size × optim.accumulate)."""
  if optim.lr_scaling not in LR_SCALING:
    raise ValueError(f"unknown optim.lr_scaling {optim.lr_scaling!r}: {', '.join(LR_SCALING)}")
  ratio = batch_size * optim.accumulate / optim.base_batch_size
  return optim.lr * {"none": 1.0, "linear": ratio, "sqrt": ratio ** 0.5}[optim.lr_scaling]


def make_optimizer(optim: ml_collections.ConfigDict, total_steps: int, warmup_steps: int = 0,
                   skip_nonfinite: bool = False, batch_size: int | None = None
                   ) -> optax.GradientTransformation:
  """The optimiser for `total_steps` batches of `batch_size` (default: optim.base_batch_size)."""
  k = optim.accumulate
  if k < 1:
    raise ValueError(f"optim.accumulate={k}: at least 1")
  optim = optim.copy_and_resolve_references()
  optim.lr = scaled_lr(optim, batch_size or optim.base_batch_size)
  lr = learning_rate(optim, max(total_steps // k, 1), warmup_steps // k)
  if optim.name == "adam":
    tx = optax.adam(lr, b1=optim.b1, b2=optim.b2)
  elif optim.name == "adamw":
    tx = optax.adamw(lr, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay)
  else:
    raise ValueError(f"unknown optim.name {optim.name!r}: adam or adamw")
  tx = optax.chain(optax.clip_by_global_norm(optim.grad_clip), tx) if optim.grad_clip else tx
  # Never apply a non-finite update, however many in a row: the trainer stops first.
  tx = optax.apply_if_finite(tx, max_consecutive_errors=2 ** 30) if skip_nonfinite else tx
  return optax.MultiSteps(tx, k).gradient_transformation() if k > 1 else tx


def skipped_updates(opt_states) -> tuple[int, int]:
  """(the longest run of consecutive skips, the total skipped) over the `apply_if_finite`
  states in a pytree of optimiser states ((0, 0) without any). Reads only those counters
  from the devices."""
  found = [s for s in jax.tree.leaves(opt_states, is_leaf=lambda x: isinstance(
      x, optax.ApplyIfFiniteState)) if isinstance(s, optax.ApplyIfFiniteState)]
  return (max((int(s.notfinite_count) for s in found), default=0),
          sum(int(s.total_notfinite) for s in found))
