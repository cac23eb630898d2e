"""The optimiser options: learning-rate scaling and gradient accumulation."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs.classify import get_config as classify_config
from configs.synthesis import get_config as synthesis_config
from nodule_jax.optimizers import make_optimizer, scaled_lr


def _optim(**overrides) -> ml_collections.ConfigDict:
  optim = synthesis_config("smoke").optim
  optim.update(overrides)
  return optim


def test_lr_scaling_rules_by_hand():
  optim = _optim(lr=1e-4, base_batch_size=8)
  assert scaled_lr(optim, 32) == 1e-4
  optim.lr_scaling = "linear"
  assert scaled_lr(optim, 32) == pytest.approx(4e-4)
  optim.update(lr_scaling="sqrt", accumulate=2)           # effective batch 64: ratio 8
  assert scaled_lr(optim, 32) == pytest.approx(1e-4 * 8 ** 0.5)
  with pytest.raises(ValueError, match="linear, sqrt"):
    scaled_lr(_optim(lr_scaling="cubic"), 8)
  with pytest.raises(ValueError, match="accumulate=0"):
    make_optimizer(_optim(accumulate=0), 10)
  assert classify_config("smoke").optim.accumulate == 1


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_accumulating_k_batches_equals_one_k_times_larger_batch(name):
  """A per-sample mean loss: k = 2 updates from half batches = one update from the whole."""
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(3, 8, 5)), rng.normal(size=(3, 8))
  loss = lambda w, xb, yb: jnp.mean((xb @ w - yb) ** 2)
  runs = {}
  for k in (1, 2):
    optim = _optim(name=name, lr=1e-2, accumulate=k, weight_decay=1e-3, schedule="cosine",
                   warmup_steps=2, lr_scaling="linear", base_batch_size=8)
    tx = make_optimizer(optim, 3 * k, warmup_steps=2 * k, batch_size=8 // k)
    w = jnp.ones(5)
    state = tx.init(w)
    for step in range(3):
      for part in range(k):
        rows = slice(part * 8 // k, (part + 1) * 8 // k)
        grads = jax.grad(loss)(w, x[step, rows], y[step, rows])
        updates, state = tx.update(grads, state, w)
        w = optax.apply_updates(w, updates)
    runs[k] = np.asarray(w)
  assert not np.allclose(runs[1], 1.0)
  np.testing.assert_allclose(runs[2], runs[1], rtol=1e-5, atol=1e-6)
