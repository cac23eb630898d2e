"""layers.conv3d's implementations (XLA's conv, the patch matmul, oneDNN) against lax's conv,
and the choice between them."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest


@pytest.mark.parametrize("impl", ["xla", "matmul", "onednn"])
def test_strided_conv3d_equals_lax_strided_conv(impl):
  """layers.conv3d's space-to-depth stride 2 (through XLA's conv or the patch matmul) and
  oneDNN's own strided conv against XLA's strided convolution: odd and even sizes, mixed
  strides, asymmetric padding, groups."""
  from nodule_jax.models.layers import conv3d, conv_impl
  rng = np.random.default_rng(0)
  cases = [((1, 7, 8, 9, 4), (3, 3, 3), (2, 2, 2), (1, 1, 1), 1),
           ((2, 6, 5, 8, 4), (7, 7, 7), (1, 2, 2), (3, 3, 3), 1),
           ((1, 9, 6, 7, 8), (3, 3, 3), (2, 1, 2), (1, 1, 1), 4),
           ((1, 8, 8, 8, 2), (1, 1, 1), (2, 2, 2), (0, 0, 0), 1),
           ((1, 6, 7, 6, 2), (4, 2, 3), (2, 2, 2), ((1, 2), (0, 1), (1, 1)), 2)]
  for shape, k, strides, padding, groups in cases:
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=(*k, shape[-1] // groups, 8)), jnp.float32)
    pairs = [(p, p) if isinstance(p, int) else p for p in padding]
    expected = jax.lax.conv_general_dilated(
        x, w, strides, pairs, dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
        feature_group_count=groups)
    with conv_impl(impl):
      got = conv3d(x, w, strides, padding, groups)
    assert got.shape == expected.shape, (shape, k, strides)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_conv_as_matmul_values_and_gradients_equal_xla():
  """The patch-matmul conv (the CPU default) against lax.conv_general_dilated: dilations,
  uneven kernels and padding, groups; values and both gradients."""
  from nodule_jax.models.layers import conv_as_matmul
  rng = np.random.default_rng(1)
  cases = [((2, 5, 6, 7, 3), (3, 3, 3), ((1, 1),) * 3, 1, 1),
           ((1, 8, 9, 10, 4), (3, 3, 3), ((4, 4),) * 3, 4, 1),
           ((1, 6, 5, 7, 2), (2, 4, 3), ((0, 1), (2, 1), (1, 1)), 1, 1),
           ((2, 5, 5, 5, 6), (3, 3, 3), ((2, 2),) * 3, 2, 3)]
  for shape, k, padding, dilation, groups in cases:
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=(*k, shape[-1] // groups, 6)), jnp.float32)

    def xla(x, w):
      return jax.lax.conv_general_dilated(
          x, w, (1, 1, 1), padding, rhs_dilation=(dilation,) * 3,
          dimension_numbers=("NDHWC", "DHWIO", "NDHWC"), feature_group_count=groups)

    ours = lambda x, w: conv_as_matmul(x, w, padding, dilation, groups)
    np.testing.assert_allclose(ours(x, w), xla(x, w), rtol=1e-4, atol=1e-4)
    probe = jnp.asarray(rng.normal(size=xla(x, w).shape), jnp.float32)
    grads = [jax.grad(lambda x, w, f=f: jnp.sum(f(x, w) * probe), (0, 1))(x, w)
             for f in (ours, xla)]
    for got, expected in zip(*grads):
      np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)


def test_conv_impl_rejects_unknown_names_and_restores():
  from nodule_jax.models import layers
  with pytest.raises(ValueError, match="conv_impl must be one of"):
    with layers.conv_impl("cudnn"):
      pass
  same = [(1, 1)] * 3
  with layers.conv_impl("xla"):
    assert layers._choose(1, jnp.float32, same) == "xla"
  with layers.conv_impl("auto"):   # on the CPU; the tests' 8 devices rule out oneDNN
    assert layers._choose(1, jnp.float32, same) == "matmul"
    assert layers._choose(4, jnp.float32, same) == "xla"
  with layers.conv_impl("matmul"):
    assert layers._choose(4, jnp.float32, same) == "matmul"
  with layers.conv_impl("onednn"):  # float32 / bfloat16 with non-negative padding only
    assert layers._choose(1, jnp.float32, same) == "onednn"
    assert layers._choose(4, jnp.float32, same) == "onednn"
    assert layers._choose(1, jnp.bfloat16, same) == (
        "onednn" if layers.onednn.bf16_supported() else "xla")
    assert layers._choose(1, jnp.float16, same) == "xla"
    assert layers._choose(1, jnp.float32, [(-1, 1)] * 3) == "xla"
