"""One process of the multi-process tests (run by test_multihost.py, not by pytest itself).

  multihost_worker.py batch DATA_DIR
  multihost_worker.py train synthesis|classify DATA_DIR WORKDIR STEPS

`batch`: this host's part of one global batch. `train`: the task's smoke config on all
devices of all processes for STEPS steps (GAN) or epochs (classifier), resuming from
WORKDIR's checkpoint; process 0 writes the final parameters to WORKDIR/params.npz.
"""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds

from nodule_jax import input_pipeline
from nodule_jax.sharding import make_mesh, maybe_initialize_distributed, to_global


def batch(data_dir: str) -> None:
  mesh = make_mesh()
  ds = input_pipeline.train_stream(data_dir, 4, seed=0)
  local = next(iter(tfds.as_numpy(ds)))  # this host's 2 examples
  global_batch = to_global({k: local[k] for k in ("image", "diameter_mm")}, mesh)
  total = jax.jit(lambda d: jnp.sum(d))(global_batch["diameter_mm"])
  print("RESULT " + json.dumps(dict(
      process=jax.process_index(), processes=jax.process_count(), devices=jax.device_count(),
      shape=list(global_batch["image"].shape), local_sum=float(np.sum(local["diameter_mm"])),
      global_sum=float(total))), flush=True)


def smoke_config(task: str, data_dir: str, steps: int):
  """The task's smoke config on `data_dir`, for `steps` steps (GAN) or epochs (classifier)."""
  if task == "synthesis":
    from configs.synthesis import get_config
    config = get_config("smoke")
    config.num_steps = steps
  else:
    from configs.classify import get_config
    config = get_config("smoke")
    config.epochs = steps
  config.data.data_dir = data_dir
  return config


def final_params(task: str, result):
  """The trained parameters, as numpy on this host."""
  from nodule_jax.sharding import host_copy
  if task == "synthesis":
    return host_copy((result.g_params, result.g_average))
  return host_copy(result["state"].params)


def train(task: str, data_dir: str, workdir: str, steps: str) -> None:
  from experiments.train import train as run
  result = run(smoke_config(task, data_dir, int(steps)), workdir)
  params = final_params(task, result)
  if jax.process_index() == 0:
    flat = {jax.tree_util.keystr(path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    np.savez(f"{workdir}/params.npz", **flat)


if __name__ == "__main__":
  assert maybe_initialize_distributed()  # before anything touches devices
  {"batch": batch, "train": train}[sys.argv[1]](*sys.argv[2:])
