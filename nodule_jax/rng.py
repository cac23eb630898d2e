"""Named random streams: every random draw of a run is `stream_key(seed, Stream.X, index...)`.

A stream per purpose keeps draws independent (the critic's masks never repeat the
generator's) and reproducible (a draw depends on the seed, its stream and its step alone).
"""
from __future__ import annotations

import enum

import jax


class Stream(enum.IntEnum):
  CRITIC = 0      # the critic step's masks, noise and gradient-penalty interpolation
  GENERATOR = 1   # the generator step's masks and noise
  SUMMARY = 2     # TensorBoard image summaries
  FIGURE = 3      # Fig. 3: one key per noise draw
  SYNTHESIS = 4   # synthetic sets: masks and noise per example
  EVALUATION = 5  # the synthesis evaluation's in-paintings and Fig. 2
  INSERTION = 6   # nodules in-painted into whole scans: masks and noise per nodule


def stream_key(seed: int, stream: Stream, *indices) -> jax.Array:
  """PRNGKey(seed) folded with the stream, then with each index (e.g. the step)."""
  key = jax.random.fold_in(jax.random.PRNGKey(seed), int(stream))
  for i in indices:
    key = jax.random.fold_in(key, i)
  return key


class InpaintKey(enum.IntEnum):
  """What an in-painting key (`inpaint.inpaint`'s `rng`) is folded with for each draw, so
  no two draws share a key (with jax's partitionable threefry, split(rng)[i] is
  fold_in(rng, i): a split and a fold would repeat each other)."""
  HOLE = 0         # the hole's jitter and shift
  NOISE = 1        # the noise in the hole
  OTHER_NOISE = 2  # a second noise for the same hole (mode seeking)
  RATINGS = 3      # the ratings drawn for a request (a GAN conditioned on them)


def inpaint_key(rng: jax.Array, use: InpaintKey) -> jax.Array:
  """The key of one draw of an in-pass made with `rng`."""
  return jax.random.fold_in(rng, int(use))
