"""The PyTorch twins compute the project's functions, and --vs-torch prints its table."""
import os
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
       "--vs-torch", "--torch_arch", "resnet-18", "--torch_batch", "2", "--steps", "1"],
      capture_output=True, text=True, cwd=root, timeout=900,
      env={**os.environ, "XLA_FLAGS": ""})
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [line for line in proc.stdout.splitlines() if "| ratio " in line]
  assert len(rows) == 2 and "critic step with GP" in rows[0] and "resnet-18" in rows[1]
  for row in rows:
    ratio = float(row.split("| ratio ")[1].split()[0])
    assert 0 < ratio < 100 and "equal to" in row
