"""What both trainers share around their steps: the non-finite guard and the progress line."""
from __future__ import annotations

import time

import numpy as np

from nodule_jax.checkpoint import Checkpointer
from nodule_jax.optimizers import skipped_updates


def check_finite(metrics: dict[str, float], step: int, checkpointer: Checkpointer) -> None:
  """Raises FloatingPointError naming every non-finite metric, the step and the checkpoint
  that is kept (the caller has not saved this step's state)."""
  bad = _nonfinite(metrics)
  if bad:
    raise FloatingPointError(f"non-finite loss at step {step}: {bad}. Stopping; "
                             f"{_kept(checkpointer)}")


def _nonfinite(metrics: dict[str, float]) -> str:
  return ", ".join(f"{k}={v}" for k, v in sorted(metrics.items()) if not np.isfinite(v))


def _kept(checkpointer: Checkpointer) -> str:
  last = checkpointer.latest_step()
  return (f"the last good checkpoint (step {last}) is kept in {checkpointer.directory}"
          if last is not None else "no checkpoint had been written yet")


NONFINITE_POLICIES = ("stop", "skip")


class NonFiniteGuard:
  """config.on_nonfinite: "stop" (raise at the first non-finite metric, `check_finite`) or
  "skip" (the optimiser skipped the update, `optimizers.make_optimizer(skip_nonfinite=True)`;
  each skip is logged and counted, and more than `config.max_nonfinite_skips` in a row
  stop the run as "stop" would)."""

  def __init__(self, config, checkpointer: Checkpointer):
    if config.on_nonfinite not in NONFINITE_POLICIES:
      raise ValueError(f"config.on_nonfinite={config.on_nonfinite!r}; known: "
                       f"{', '.join(NONFINITE_POLICIES)}")
    self.skip = config.on_nonfinite == "skip"
    self.limit = config.max_nonfinite_skips
    self.checkpointer = checkpointer
    self.total = 0

  def __call__(self, metrics: dict[str, float], step: int, opt_states) -> dict[str, float]:
    """Checks one step's metrics; returns {"skipped_updates": total} to log ("skip")."""
    if not self.skip:
      check_finite(metrics, step, self.checkpointer)
      return {}
    consecutive, total = skipped_updates(opt_states)
    bad = _nonfinite(metrics) or "the losses are finite"
    if total > self.total:
      print(f"step {step}: non-finite gradients ({bad}); update skipped ({consecutive} in a "
            f"row, {total} in all)", flush=True)
      self.total = total
    if consecutive > self.limit:
      raise FloatingPointError(
          f"{consecutive} updates in a row skipped for non-finite gradients at step {step} "
          f"(config.max_nonfinite_skips={self.limit}): {bad}. Stopping; "
          f"{_kept(self.checkpointer)}")
    return {"skipped_updates": float(total)}


class Progress:
  """Steps per second since the last report, and the ETA of `total` steps."""

  def __init__(self, start: int, total: int):
    self.total, self._step, self._time = total, start, time.time()
    self.started = self._time

  def rate(self, step: int) -> float:
    now = time.time()
    rate = (step - self._step) / max(now - self._time, 1e-9)
    self._step, self._time = step, now
    return rate

  def eta(self, step: int, rate: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime((self.total - step) / max(rate, 1e-9)))
