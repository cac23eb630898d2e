"""The PyTorch twins compute the project's functions, and --vs-torch prints its table."""
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the twins need the optional torch extra")

from nodule_jax.models.critic import Critic  # noqa: E402
from nodule_jax.torch_twins import critic_from_flax  # noqa: E402


def test_the_critic_twin_gives_the_same_scores_and_input_gradients():
  shape, widths = (8, 16, 24), (4, 8, 8)
  x = np.random.default_rng(0).normal(size=(3, *shape, 1)).astype(np.float32)
  label = np.array([0, 1, 1], np.int32)
  critic = Critic(widths=widths)
  params = critic.init(jax.random.PRNGKey(0), jnp.asarray(x), jnp.asarray(label))["params"]
  # non-trivial LayerNorm affine and class embedding, so their mapping is checked too
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(1), p.shape),
                        params)
  score = lambda x: critic.apply({"params": params}, x, jnp.asarray(label))
  wgan, aux = score(jnp.asarray(x))
  grad = jax.grad(lambda x: jnp.sum(score(x)[0]))(jnp.asarray(x))     # what the GP needs

  twin = critic_from_flax(params, shape, widths)
  tx = torch.from_numpy(np.moveaxis(x, -1, 1).copy()).requires_grad_(True)
  t_wgan, t_aux = twin(tx, torch.from_numpy(label.astype(np.int64)))
  t_grad, = torch.autograd.grad(t_wgan.sum(), tx)
  np.testing.assert_allclose(t_wgan.detach().numpy(), wgan, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(t_aux.detach().numpy(), aux, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.moveaxis(t_grad.numpy(), 1, -1), grad, rtol=1e-4, atol=1e-6)
  assert np.abs(grad).max() > 0


@pytest.mark.slow
def test_vs_torch_prints_a_guarded_ratio_per_workload():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.benchmark", "--config", "configs/synthesis.py:smoke",
       "--vs-torch", "--torch_arch", "resnet-18", "--torch_batch", "2", "--steps", "1",
       "--conv_channels", "8"],
      capture_output=True, text=True, cwd=root, timeout=900,
      env={**os.environ, "XLA_FLAGS": ""})
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [line for line in proc.stdout.splitlines() if re.search(r"\| ratio \d", line)]
  assert [row.split("|")[1].split(" (")[0].split(",")[0].strip() for row in rows] == [
      "critic step with GP", "generator step", "synthesis batch", "resnet-18 train step",
      "3×3×3 conv fwd + bwd", "3×3×3 conv fwd + bwd"]
  assert "float32 |" in rows[-2]
  assert "bfloat16 |" in rows[-1]
  for row in rows:
    ratio = float(row.split("| ratio ")[1].split()[0])
    assert 0 < ratio < 100 and "equal to" in row


def test_the_generator_twin_with_contextual_attention_gives_the_same_outputs():
  from nodule_jax.models.generator import Generator
  from nodule_jax import torch_twins
  rng = np.random.default_rng(1)
  shape = (8, 16, 16)
  inputs = rng.uniform(-1, 1, (2, *shape, 3)).astype(np.float32)
  mask = np.zeros((2, *shape, 1), np.float32)
  mask[0, 2:6, 4:12, 4:12], mask[1, 3:7, 6:14, 2:10] = 1, 1    # per-sample holes
  inputs[..., 1:2] = mask
  masked = inputs[..., :1]
  generator = Generator(width=4, depth=2, dilations=(1, 2), attention=True)
  params = generator.init(jax.random.PRNGKey(0), inputs, mask, masked)["params"]
  # larger weights than at init: the attention branch then moves the output by ~0.8 (at
  # init it moves it by < 1e-7, and a twin with its convs swapped would pass)
  params = jax.tree.map(lambda p: 2 * p + 0.05 * jax.random.normal(jax.random.PRNGKey(2),
                                                                   p.shape), params)
  x1, x2 = generator.apply({"params": params}, inputs, mask, masked)
  twin = torch_twins.Generator(params, depth=2, dilations=(1, 2))
  t = lambda a: torch.from_numpy(np.moveaxis(a, -1, 1).copy())
  with torch.no_grad():
    t1, t2 = twin(t(inputs), t(mask), t(masked))
  np.testing.assert_allclose(np.moveaxis(t1.numpy(), 1, -1), x1, atol=1e-4)
  np.testing.assert_allclose(np.moveaxis(t2.numpy(), 1, -1), x2, atol=1e-4)
  assert 0.1 < float(np.std(np.asarray(x2))) and float(np.mean(np.abs(x2) < 1)) > 0.2
