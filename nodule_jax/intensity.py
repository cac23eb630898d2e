"""Hounsfield units <-> the networks' [-1, 1] scale, in one place.

HU is clipped to [HU_MIN, HU_MAX] (lung window with bone cut) and mapped linearly onto
[-1, 1]; `unit_to_hu` inverts it inside the clip range.
"""
from __future__ import annotations

import numpy as np

HU_MIN, HU_MAX = -1000.0, 400.0


def hu_to_unit(hu):
  """HU -> [-1, 1] after clipping; numpy arrays stay numpy, anything else goes through tf."""
  if isinstance(hu, (np.ndarray, np.generic)):
    x = np.clip(np.asarray(hu, np.float32), HU_MIN, HU_MAX)
  else:
    import tensorflow as tf
    x = tf.clip_by_value(tf.cast(hu, tf.float32), HU_MIN, HU_MAX)
  return (x - HU_MIN) / (HU_MAX - HU_MIN) * 2.0 - 1.0


def unit_to_hu(x) -> np.ndarray:
  """[-1, 1] -> int16 HU (rounded)."""
  hu = (np.asarray(x, np.float32) + 1) / 2 * (HU_MAX - HU_MIN) + HU_MIN
  return np.rint(hu).astype(np.int16)
