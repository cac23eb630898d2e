"""Step-time benchmark of the in-painting GAN against this machine's measured peak.

  python -m experiments.benchmark --config configs/synthesis.py[:demo] [--steps 5]

Prints, for a critic step (with gradient penalty) and a generator step at the config's batch
size: compile time, median step time after warm-up, XLA's FLOP count per step, achieved
GFLOP/s, the dense fp32 peak measured in the same run (a large jit'd matmul), and the ratio.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import time  # noqa: E402

from absl import flags  # noqa: E402
from experiments import cli  # noqa: E402
from ml_collections import config_flags  # noqa: E402


def _median_time(fn, steps: int) -> float:
  import jax
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return sorted(times)[len(times) // 2]


def matmul_peak(n: int = 2048, steps: int = 5) -> float:
  """Dense fp32 GFLOP/s of a jit'd n×n matmul."""
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  jax.block_until_ready(f(a))
  return 2 * n ** 3 / _median_time(lambda: f(a), steps) / 1e9


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan")))


def benchmark_steps(config, steps: int) -> list[dict]:
  import numpy as np

  from nodule_jax import train_synthesis
  from nodule_jax.inpaint import build_models, working_shape
  from nodule_jax.masks import sphere_mask
  from nodule_jax.sharding import make_mesh, to_global
  mesh = make_mesh(config.num_devices or None)
  models = build_models(config)
  tx_g, tx_d = train_synthesis.make_optimizers(config)
  state, sharding = train_synthesis.create_state(config, models, tx_g, tx_d, mesh)
  rng = np.random.default_rng(0)
  b = config.batch_size
  shape = working_shape(config)
  diameter = rng.uniform(4, config.mask.max_diameter_mm, b).astype(np.float32)
  batch = to_global({"image": rng.uniform(-1, 1, (b, *shape, 1)).astype(np.float32),
                     "mask": np.asarray(sphere_mask(shape, diameter / 2)),
                     "label": rng.integers(0, 2, b).astype(np.int32),
                     "diameter_mm": diameter}, mesh)
  d_step, g_step = train_synthesis.compile_steps(config, models, tx_g, tx_d, mesh, sharding)
  rows = []
  for name, step in (("critic step (with GP)", d_step), ("generator step", g_step)):
    t = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t
    holder = {"state": state}

    def run():
      holder["state"], metrics = compiled(holder["state"], batch)
      return metrics

    run()  # warm-up
    seconds = _median_time(run, steps)
    state = holder["state"]
    flops = _flops(compiled)
    rows.append(dict(name=name, compile_s=compile_s, step_s=seconds, gflop=flops / 1e9,
                     gflops=flops / seconds / 1e9))
  return rows


def main(argv):
  del argv
  config = flags.FLAGS.config
  import jax
  rows = benchmark_steps(config, flags.FLAGS.steps)
  peak = matmul_peak()
  print(f"config: {config.variant}, batch {config.batch_size}, width {config.model.width}, "
        f"{jax.device_count()} {jax.default_backend()} device(s)")
  print(f"measured dense fp32 peak (2048² matmul): {peak:.1f} GFLOP/s")
  print("| step | compile s | median step s | GFLOP/step | GFLOP/s | of peak |")
  print("|---|---:|---:|---:|---:|---:|")
  for r in rows:
    print(f"| {r['name']} | {r['compile_s']:.1f} | {r['step_s']:.3f} | {r['gflop']:.2f} | "
          f"{r['gflops']:.1f} | {r['gflops'] / peak:.1%} |")
  n = config.n_critic
  total = n * rows[0]["step_s"] + rows[1]["step_s"]
  print(f"one training iteration ({n} critic + 1 generator step): {total:.2f} s")


def define_flags() -> None:
  """The flags of this entry point (defined when it runs, so that others can import it)."""
  config_flags.DEFINE_config_file("config", None, "GAN config (path[:variant]).", lock_config=True)
  flags.DEFINE_integer("steps", 5, "Timed steps after one warm-up step.")
  flags.mark_flags_as_required(["config"])


if __name__ == "__main__":
  define_flags()
  cli.run(main)
