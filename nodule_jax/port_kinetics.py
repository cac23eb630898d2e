"""Porting Hara et al.'s Kinetics checkpoints (3D-ResNets-PyTorch, .pth) to Flax.

Both releases: 2018 (Kinetics-400; `{'arch', 'state_dict', ...}`, keys prefixed `module.`)
and 2020 (Kinetics-700 / K+M, `r3d50_K_200ep.pth` style). Conv weights (O, I, kD, kH, kW)
-> (kD, kH, kW, I/groups, O); BatchNorm running statistics -> `batch_stats`. For one CT
channel conv1's RGB weights are summed; a head of another size is freshly initialised.
torch is imported here only (the optional `torch` extra).
"""
from __future__ import annotations

import pickle
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from nodule_jax.models import resnet3d

_BN = {"weight": ("params", "scale"), "bias": ("params", "bias"),
       "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}


class PortError(ValueError):
  """A checkpoint that does not match the architecture; names the offending key."""


def read_pth(path: str) -> tuple[str | None, dict[str, np.ndarray]]:
  """(arch or None, state_dict as numpy with any `module.` prefix removed)."""
  import torch
  try:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    raise PortError(f"{path}: refused, loading it would run arbitrary pickle code "
                    f"(torch.load weights_only=True failed): {e}") from e
  state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
  if not isinstance(state, dict):
    raise PortError(f"{path}: no state_dict in the file")
  arch = ckpt.get("arch") if isinstance(ckpt, dict) else None
  out = {}
  for k, v in state.items():
    out[k[len("module."):] if k.startswith("module.") else k] = v.detach().cpu().numpy()
  return arch, out


def _flax_path(key: str) -> tuple[str, ...] | None:
  """'layer2.0.downsample.1.running_mean' -> ('batch_stats', 'layer2_0', 'downsample_bn',
  'mean'); None for keys without a Flax counterpart (num_batches_tracked)."""
  parts = key.split(".")
  if parts[-1] == "num_batches_tracked":
    return None
  m = re.fullmatch(r"layer(\d)\.(\d+)\.(.+)", key)
  prefix = ()
  if m:
    prefix, parts = (f"layer{m.group(1)}_{m.group(2)}",), m.group(3).split(".")
  if parts[0] == "downsample":
    parts = ["downsample_conv" if parts[1] == "0" else "downsample_bn", parts[2]]
  module, leaf = parts
  if module.startswith("bn") or module == "downsample_bn":
    if leaf not in _BN:
      raise PortError(f"unexpected key {key!r}")
    collection, name = _BN[leaf]
    return (collection, *prefix, module, name)
  if module == "fc":
    return ("params", "fc", {"weight": "kernel", "bias": "bias"}[leaf])
  if leaf != "weight":
    raise PortError(f"unexpected key {key!r}")
  return ("params", *prefix, module, "kernel")


def _convert(key: str, value: np.ndarray) -> np.ndarray:
  if value.ndim == 5:
    return value.transpose(2, 3, 4, 1, 0)
  if key.startswith("fc.") and value.ndim == 2:
    return value.T
  return value


def torch_to_flax(state: dict[str, np.ndarray], arch: str, num_classes: int = 2,
                  in_channels: int = 1, seed: int = 0) -> tuple[resnet3d.ResNet3D, dict]:
  """Builds `arch` and fills its variables from a PyTorch state_dict."""
  if "layer2.0.downsample.0.weight" not in state and arch in ("resnet-18", "resnet-34"):
    shortcut = "A"
  else:
    shortcut = "B"
  model = resnet3d.create(arch, num_classes, shortcut=shortcut)
  x = jnp.zeros((1, 16, 32, 32, in_channels))
  fresh = jax.jit(model.init)(jax.random.PRNGKey(seed), x)
  flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(fresh)).items()}
  ckpt_classes = state["fc.weight"].shape[0] if "fc.weight" in state else None
  keep_head = ckpt_classes == num_classes
  filled = set()
  for key, value in state.items():
    path = _flax_path(key)
    if path is None:
      continue
    if path not in flat:
      raise PortError(f"unexpected key {key!r} for {arch} (shortcut {shortcut})")
    if path[1] == "fc" and not keep_head:
      continue
    value = _convert(key, value)
    if key == "conv1.weight" and value.shape[3] != in_channels:
      if in_channels != 1:
        raise PortError(f"conv1.weight has {value.shape[3]} input channels; can make 1 "
                        f"(summed) or keep {value.shape[3]}, not {in_channels}")
      value = value.sum(axis=3, keepdims=True)
    if value.shape != flat[path].shape:
      raise PortError(f"shape mismatch for {key!r}: checkpoint {value.shape} (Flax layout), "
                      f"{arch} expects {flat[path].shape}")
    flat[path] = value.astype(flat[path].dtype)
    filled.add(path)
  missing = [p for p in flat if p not in filled and not (p[1] == "fc" and not keep_head)]
  if missing:
    raise PortError(f"missing key for {arch}: {'/'.join(missing[0])} "
                    f"(and {len(missing) - 1} more)")
  return model, jax.tree.map(jnp.asarray, traverse_util.unflatten_dict(flat))


def load_kinetics(path: str, arch: str, num_classes: int = 2, in_channels: int = 1
                  ) -> tuple[resnet3d.ResNet3D, dict[str, Any]]:
  """(model, {'params', 'batch_stats'}) from a 3D-ResNets-PyTorch .pth file."""
  file_arch, state = read_pth(path)
  if file_arch is not None and _canonical(file_arch) != _canonical(arch):
    raise PortError(f"{path} holds {file_arch!r}, not {arch!r}")
  return torch_to_flax(state, arch, num_classes, in_channels)


def _canonical(arch: str) -> str:
  return arch.lower().replace("_", "-")
