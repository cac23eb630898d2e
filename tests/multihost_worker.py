"""One process of the two-process test (run by test_multihost.py, not by pytest itself)."""
import json
import sys

from nodule_jax.sharding import make_mesh, maybe_initialize_distributed, to_global

assert maybe_initialize_distributed()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from nodule_jax import input_pipeline  # noqa: E402

data_dir = sys.argv[1]
mesh = make_mesh()
ds = input_pipeline.train_stream(data_dir, 4, seed=0)
local = next(iter(tfds.as_numpy(ds)))  # this host's 2 examples
batch = to_global({k: local[k] for k in ("image", "diameter_mm")}, mesh)
total = jax.jit(lambda d: jnp.sum(d))(batch["diameter_mm"])
print("RESULT " + json.dumps(dict(
    process=jax.process_index(), processes=jax.process_count(), devices=jax.device_count(),
    shape=list(batch["image"].shape), local_sum=float(np.sum(local["diameter_mm"])),
    global_sum=float(total))), flush=True)
