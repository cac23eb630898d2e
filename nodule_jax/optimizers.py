"""The optimiser of both trainers, from a config's `optim` block.

optim: name ('adam' | 'adamw'), lr, b1, b2, weight_decay (adamw), schedule ('constant':
linear warm-up then constant; 'cosine': linear warm-up then cosine decay to 0), grad_clip
(global norm; 0 = off).
"""
from __future__ import annotations

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


def make_optimizer(optim: ml_collections.ConfigDict, total_steps: int, warmup_steps: int = 0
                   ) -> optax.GradientTransformation:
  lr = learning_rate(optim, total_steps, warmup_steps)
  if optim.name == "adam":
    tx = optax.adam(lr, b1=optim.b1, b2=optim.b2)
  elif optim.name == "adamw":
    tx = optax.adamw(lr, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay)
  else:
    raise ValueError(f"unknown optim.name {optim.name!r}: adam or adamw")
  return optax.chain(optax.clip_by_global_norm(optim.grad_clip), tx) if optim.grad_clip else tx
