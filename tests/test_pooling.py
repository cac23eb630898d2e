"""The ResNet stem's max pool: XLA's function, with a tap-wise gradient on CPU."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nodule_jax.models.pooling import _reduce_window, max_pool3d


@pytest.mark.parametrize("shape", [(2, 7, 9, 8, 3), (1, 5, 5, 5, 2), (2, 16, 33, 31, 4)])
@pytest.mark.parametrize("values", ["distinct", "ties"])
def test_values_and_gradient_equal_xlas_max_pool(shape, values):
  rng = np.random.default_rng(0)
  if values == "ties":                    # three levels: most windows tie at their maximum
    x = rng.integers(0, 3, shape).astype(np.float32)
  else:
    x = rng.normal(size=shape).astype(np.float32)
  y = _reduce_window(x)
  probe = rng.normal(size=y.shape).astype(np.float32)
  np.testing.assert_array_equal(max_pool3d(x), y)
  ours = jax.grad(lambda v: jnp.sum(max_pool3d(v) * probe))(x)
  xla = jax.grad(lambda v: jnp.sum(_reduce_window(v) * probe))(x)
  np.testing.assert_allclose(ours, xla, atol=1e-6)   # sums of up to 8 windows, reassociated


def test_a_tied_window_sends_its_gradient_to_its_first_voxel_only():
  x = np.zeros((1, 2, 2, 2, 1), np.float32)     # one output: window voxels (0..1)³ all tie
  dx = jax.grad(lambda v: jnp.sum(max_pool3d(v) * 5.0))(x)
  expected = np.zeros_like(x)
  expected[0, 0, 0, 0, 0] = 5.0                 # row-major first in the (padded) window
  np.testing.assert_array_equal(dx, expected)


def test_other_pools_and_bfloat16_keep_xlas_function():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.integers(0, 3, (1, 6, 7, 6, 2)), jnp.bfloat16)     # with ties
  assert max_pool3d(x).dtype == jnp.bfloat16
  np.testing.assert_array_equal(max_pool3d(x), _reduce_window(x))
  np.testing.assert_array_equal(max_pool3d(x, 2, 2, 0), _reduce_window(x, 2, 2, 0))
  probe = jnp.asarray(rng.normal(size=max_pool3d(x).shape), jnp.bfloat16)
  ours = jax.grad(lambda v: jnp.sum((max_pool3d(v) * probe).astype(jnp.float32)))(x)
  xla = jax.grad(lambda v: jnp.sum((_reduce_window(v) * probe).astype(jnp.float32)))(x)
  assert ours.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(ours, np.float32), np.asarray(xla, np.float32),
                             rtol=2e-2, atol=2e-2)      # bf16 sums of up to 8 windows
