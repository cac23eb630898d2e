"""oneDNN's convolution as XLA custom calls (nodule_jax.models.onednn) against XLA's own."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nodule_jax.models import onednn

CASES = [  # x shape, kernel, padding, dilation, strides, groups
    ((2, 5, 6, 7, 3), (3, 3, 3), ((1, 1),) * 3, 1, 1, 1),
    ((1, 8, 9, 10, 4), (3, 3, 3), ((4, 4),) * 3, 4, 1, 1),
    ((1, 6, 5, 7, 2), (2, 4, 3), ((0, 1), (2, 1), (1, 0)), 1, 1, 1),
    ((3, 9, 8, 8, 1), (7, 4, 4), ((3, 3), (0, 0), (0, 0)), 1, 1, 1),  # the ResNet stem, folded
    ((1, 6, 6, 6, 5), (3, 3, 3), ((2, 2), (0, 2), (2, 0)), 2, 1, 1),
    ((2, 9, 12, 11, 1), (7, 7, 7), ((3, 3),) * 3, 1, (1, 2, 2), 1),  # the ResNet stem
    ((2, 7, 9, 8, 4), (3, 3, 3), ((1, 1),) * 3, 1, (2, 2, 2), 1),    # odd sizes at stride 2
    ((2, 6, 6, 6, 4), (3, 3, 3), ((1, 1),) * 3, 1, 1, 2),            # ResNeXt's grouped conv
    ((1, 7, 8, 8, 6), (3, 3, 3), ((1, 1),) * 3, 1, (2, 1, 2), 3),    # grouped and strided
    ((1, 8, 8, 8, 6), (1, 1, 1), ((0, 0),) * 3, 1, 2, 1),            # a strided shortcut
]


def _xla(padding, dilation, strides=1, groups=1):
  return lambda x, w: jax.lax.conv_general_dilated(
      x, w, _triple(strides), padding, rhs_dilation=(dilation,) * 3,
      dimension_numbers=("NDHWC", "DHWIO", "NDHWC"), feature_group_count=groups)


def _triple(v):
  return tuple(v) if isinstance(v, tuple) else (v,) * 3


def _case(shape, k, seed, groups=1):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  w = jnp.asarray(rng.normal(size=(*k, shape[-1] // groups, 6)) / np.sqrt(np.prod(k)),
                  jnp.float32)
  return x, w


def test_onednn_builds_here():
  assert onednn.status() == (True, "")


@pytest.mark.parametrize("case", range(len(CASES)))
def test_values_and_gradients_of_first_and_second_order_equal_xla(case):
  """Forward, both gradients, and the gradient of a gradient norm (the WGAN-GP penalty's
  double backward) with respect to input and kernel."""
  shape, k, padding, dilation, strides, groups = CASES[case]
  x, w = _case(shape, k, case, groups)
  ours = jax.jit(lambda x, w: onednn.conv3d(x, w, padding, dilation, strides, groups))
  xla = _xla(padding, dilation, strides, groups)
  np.testing.assert_allclose(ours(x, w), xla(x, w), rtol=1e-4, atol=1e-4)
  probe = jnp.asarray(np.random.default_rng(9).normal(size=xla(x, w).shape), jnp.float32)

  def penalty(f):
    def loss(x, w):
      g = jax.grad(lambda x: jnp.sum(jnp.tanh(f(x, w)) * probe))(x)
      return jnp.sum(g ** 2) + jnp.sum(f(x, w) * probe)
    return jax.jit(jax.grad(loss, (0, 1)))

  first = [jax.jit(jax.grad(lambda x, w, f=f: jnp.sum(f(x, w) * probe), (0, 1)))(x, w)
           for f in (ours, xla)]
  second = [penalty(f)(x, w) for f in (ours, xla)]
  for got, expected in [*zip(*first), *zip(*second)]:
    scale = float(np.max(np.abs(expected)))
    np.testing.assert_allclose(got / scale, expected / scale, atol=2e-5)


@pytest.mark.parametrize("case", [0, 8])
def test_under_vmap_with_a_shared_and_with_a_batched_kernel(case):
  """A plain conv and a grouped, strided one: the call's loop over the vmapped axes."""
  shape, k, padding, dilation, strides, groups = CASES[case]
  x, w = _case((4, *shape), k, 1, groups)
  ws = jnp.stack([w * (i + 1) for i in range(4)])
  xla = _xla(padding, dilation, strides, groups)
  ours = lambda x, w: onednn.conv3d(x, w, padding, dilation, strides, groups)
  for axes, kernel in (((0, None), w), ((0, 0), ws)):
    expected = jax.vmap(xla, axes)(x, kernel)
    np.testing.assert_allclose(jax.jit(jax.vmap(ours, axes))(x, kernel), expected,
                               rtol=1e-4, atol=1e-4)
    grad = lambda f: jax.vmap(jax.grad(lambda x, w: jnp.sum(f(x, w) ** 2), 1), axes)(x, kernel)
    np.testing.assert_allclose(jax.jit(lambda: grad(ours))(), grad(xla), rtol=1e-4, atol=1e-3)


@pytest.mark.skipif(not onednn.bf16_supported(), reason="oneDNN's bf16 convs need AVX-512")
@pytest.mark.parametrize("case", [0, 5, 7])
def test_bfloat16_values_and_gradients_equal_xla_in_float32(case):
  """bf16 operands (accumulation in f32 inside oneDNN) against XLA's f32 conv of the same
  bf16-rounded values: within bf16's rounding of the result."""
  shape, k, padding, dilation, strides, groups = CASES[case]
  x, w = (a.astype(jnp.bfloat16) for a in _case(shape, k, case, groups))
  ours = lambda x, w: onednn.conv3d(x, w, padding, dilation, strides, groups)
  f32 = lambda x, w: _xla(padding, dilation, strides, groups)(x.astype(jnp.float32),
                                                              w.astype(jnp.float32))
  y = jax.jit(ours)(x, w)
  assert y.dtype == jnp.bfloat16
  expected = f32(x, w)
  probe = jnp.asarray(np.random.default_rng(2).normal(size=expected.shape), jnp.float32)
  grads = [jax.jit(jax.grad(lambda x, w, f=f: jnp.sum(f(x, w).astype(jnp.float32) * probe),
                            (0, 1)))(x, w) for f in (ours, f32)]
  for got, want in [(y, expected), *zip(*grads)]:
    scale = float(np.max(np.abs(want)))
    np.testing.assert_allclose(np.asarray(got, np.float32) / scale,
                               np.asarray(want, np.float32) / scale, atol=2e-2)


def test_repeated_calls_are_bit_identical():
  """A resumed run must continue bit for bit: oneDNN's CPU results repeat exactly."""
  x, w = _case((2, 12, 16, 16, 8), (3, 3, 3), 3)
  step = jax.jit(jax.grad(lambda x, w: jnp.sum(onednn.conv3d(x, w, ((1, 1),) * 3) ** 2),
                          (0, 1)))
  first = jax.device_get(step(x, w))
  for _ in range(2):
    for a, b in zip(first, jax.device_get(step(x, w))):
      np.testing.assert_array_equal(a, b)


def test_a_missing_compiler_or_library_is_a_clear_error(monkeypatch, tmp_path):
  monkeypatch.setenv("NODULE_JAX_CACHE", str(tmp_path))
  monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
  with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
    onednn._build()
  monkeypatch.delenv("CXX")
  monkeypatch.setattr(onednn, "_prefixes", lambda: [tmp_path])
  with pytest.raises(RuntimeError, match="pip install onednn-cpu-gomp"):
    onednn._build()
