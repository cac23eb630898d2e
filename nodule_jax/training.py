"""What both trainers share around their steps: the non-finite guard and the progress line."""
from __future__ import annotations

import time

import numpy as np

from nodule_jax.checkpoint import Checkpointer


def check_finite(metrics: dict[str, float], step: int, checkpointer: Checkpointer) -> None:
  """Raises FloatingPointError naming every non-finite metric, the step and the checkpoint
  that is kept (the caller has not saved this step's state)."""
  bad = {k: v for k, v in sorted(metrics.items()) if not np.isfinite(v)}
  if not bad:
    return
  last = checkpointer.latest_step()
  kept = (f"the last good checkpoint (step {last}) is kept in {checkpointer.directory}"
          if last is not None else "no checkpoint had been written yet")
  raise FloatingPointError(f"non-finite loss at step {step}: "
                           + ", ".join(f"{k}={v}" for k, v in bad.items()) + f". Stopping; {kept}")


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
