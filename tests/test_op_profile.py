"""Where a step's time goes: XLA's per-instruction trace, grouped by kind of work."""
import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmark import profile_rows
from nodule_jax import op_profile
from nodule_jax.models import onednn


def test_a_conv_step_is_mostly_onednn_and_a_matmul_step_mostly_matmul():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 16, 32, 32, 32)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 3, 32, 32)), jnp.float32)
  conv = jax.jit(lambda x, w: jnp.tanh(onednn.conv3d(x, w, [(1, 1)] * 3)))
  a = jnp.asarray(rng.normal(size=(1024, 1024)), jnp.float32)
  matmul = jax.jit(lambda a: jnp.tanh(a @ a))
  for run, expected, hlo in (
      (lambda: conv(x, w), "oneDNN convolutions", conv.lower(x, w).compile().as_text()),
      (lambda: matmul(a), "matmuls", matmul.lower(a).compile().as_text())):
    jax.block_until_ready(run())
    times = op_profile.op_times(run, 2)
    assert times and all(s >= 0 for s in times.values())
    kinds = {k: share for k, _, share in op_profile.by_kind(times, op_profile.fusion_kinds(hlo))}
    assert max(kinds, key=kinds.get) == expected, kinds
    assert abs(sum(kinds.values()) - 1) < 1e-9
    assert "elementwise" in kinds                        # the tanh, a loop fusion
    name, _ = op_profile.top(times, 1)[0]
    assert op_profile.kind(name, op_profile.fusion_kinds(hlo)) == expected
    table = profile_rows([("step", times, hlo)])
    assert table[-1].startswith("| step |") and f"({expected}," in table[-1]


def test_library_fusions_are_classified_by_what_they_hold():
  """XNNPACK takes a BatchNorm's statistics as `ynn_fusion`s: reductions, not matmuls."""
  x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 8, 16, 16, 32)), jnp.float32)
  stats = jax.jit(lambda x: (jnp.mean(x, (0, 1, 2, 3)), jnp.mean(x * x, (0, 1, 2, 3))))
  fusions = op_profile.fusion_kinds(stats.lower(x).compile().as_text())
  library = {name: k for name, k in fusions.items() if name.startswith("ynn")}
  assert library and set(library.values()) == {"reductions"}, fusions
  matmul = jax.jit(lambda a: jnp.tanh(a @ a))
  fusions = op_profile.fusion_kinds(matmul.lower(x[0, 0, 0, :, :16]).compile().as_text())
  assert "matmuls" in fusions.values() and "elementwise" in fusions.values(), fusions
  for name in library:
    assert op_profile.kind(name) == "matmuls"                 # by name alone
    assert op_profile.kind(name, library) == "reductions"


def test_kinds_from_instruction_names():
  cases = {"ffi_call.12": "oneDNN convolutions", "custom-call.3": "oneDNN convolutions",
           "convolution.7": "XLA convolutions", "dot.2": "matmuls", "ynn_fusion.5": "matmuls",
           "multiply_reduce_fusion.1": "reductions", "input_reduce_fusion": "reductions",
           "broadcast_add_fusion.9": "elementwise", "copy.4": "data movement",
           "select-and-scatter.1": "data movement", "wrapped_tanh": "elementwise",
           "wrapped_reduce-window.2": "reductions", "wrapped_transpose": "data movement",
           "reduce.3": "reductions", "reduce-window.1": "reductions",
           "while.3": "other"}
  assert {name: op_profile.kind(name) for name in cases} == cases
