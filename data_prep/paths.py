"""Where cached artefacts live (pylidc clusters, the phantom, its shards)."""
import os
import pathlib


def cache_dir() -> pathlib.Path:
  """`$NODULE_JAX_CACHE`, else `~/.cache/nodule_jax`; created on first use."""
  root = os.environ.get("NODULE_JAX_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "nodule_jax")
  path = pathlib.Path(root)
  path.mkdir(parents=True, exist_ok=True)
  return path
