"""3D convolutions through oneDNN on the CPU: XLA FFI custom calls, built on first use.

XLA's CPU convolution reaches 2–70 GFLOP/s on these models' shapes where oneDNN (PyTorch's
CPU backend) reaches 80–300 (DESIGN §5). `conv3d` runs a float32 or bfloat16 conv (any strides,
dilation, groups) as three custom calls — forward, backward data, backward weights — from
`nodule_jax/native/onednn_conv.cc`, compiled once per source / jaxlib / oneDNN version
into `$NODULE_JAX_CACHE/native/` against the `onednn-cpu-gomp` wheels (a dependency on
Linux x86-64) and loaded with ctypes. `status()` says whether it is usable and, if not,
why (no compiler, no oneDNN headers, a failed build): `layers.conv3d` then falls back to
XLA. The three calls are one bilinear form seen three ways, so each one's VJP is made of
the other two: gradients of any order (the WGAN-GP's gradient penalty) stay in oneDNN.
Under `jax.vmap` the calls loop over the vmapped axes.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

SOURCE = pathlib.Path(__file__).resolve().parent.parent / "native" / "onednn_conv.cc"
TARGETS = {"forward": "NjConv3dForward", "data": "NjConv3dBackwardData",
           "weights": "NjConv3dBackwardWeights"}


def _cache_dir() -> pathlib.Path:
  from data_prep.paths import cache_dir
  return pathlib.Path(cache_dir()) / "native"


def _prefixes() -> list[pathlib.Path]:
  """Where pip puts the oneDNN wheels' include/ and lib/ (the environment's data dir)."""
  found = [pathlib.Path(sysconfig.get_path("data")), pathlib.Path(sys.prefix)]
  return list(dict.fromkeys(found))


def _find(relative: str) -> pathlib.Path | None:
  for prefix in _prefixes():
    if (prefix / relative).exists():
      return prefix
  return None


def _build() -> pathlib.Path:
  """Compiles the custom calls (once; cached by content) and returns the library's path."""
  wanted = os.environ.get("CXX")
  compiler = shutil.which(wanted) if wanted else shutil.which("g++") or shutil.which("c++")
  if not compiler:
    raise RuntimeError(f"no C++ compiler ({os.environ.get('CXX') or 'g++'}) to build the "
                       "oneDNN convolution; set $CXX")
  include = _find("include/oneapi/dnnl/dnnl.hpp")
  lib = _find("lib/libdnnl.so")
  if include is None or lib is None:
    raise RuntimeError("oneDNN's headers or library not found under "
                       f"{[str(p) for p in _prefixes()]}: pip install onednn-cpu-gomp==2023.2.0 "
                       "onednn-devel-cpu-gomp==2023.2.0")
  version = (include / "include/oneapi/dnnl/dnnl_version.h").read_bytes()
  key = hashlib.sha256(SOURCE.read_bytes() + version + jax.__version__.encode()).hexdigest()[:16]
  target = _cache_dir() / key / "libnjconv.so"
  if target.exists():
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
    out = pathlib.Path(tmp) / target.name
    cmd = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w",
           f"-I{jax.ffi.include_dir()}", f"-I{include / 'include'}", str(SOURCE), "-o", str(out),
           f"-L{lib / 'lib'}", "-ldnnl", f"-Wl,-rpath,{lib / 'lib'}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
      raise RuntimeError(f"building {SOURCE.name} failed:\n{done.stderr[-2000:]}")
    os.replace(out, target)   # atomic: a concurrent build or a killed one leaves no half file
  return target


@functools.cache
def status() -> tuple[bool, str]:
  """(usable, why not): builds, loads and registers the custom calls on first call."""
  try:
    library = ctypes.cdll.LoadLibrary(str(_build()))
    for name in TARGETS.values():
      jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, name)),
                                  platform="cpu")
  except (RuntimeError, OSError) as e:
    return False, str(e)
  return True, ""


@functools.cache
def bf16_supported() -> bool:
  """Whether this CPU runs oneDNN 3.2's bf16 convolutions: they need AVX-512 (its
  avx512_core: F, BW, VL, DQ; native bf16 instructions with AVX512_BF16 or AMX)."""
  try:
    flags = set(pathlib.Path("/proc/cpuinfo").read_text().split())
  except OSError:
    return False
  return {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags


def supports(dtype, padding) -> bool:
  """oneDNN's calls here take float32 (or, on AVX-512 CPUs, bfloat16) operands and
  non-negative padding."""
  typed = dtype == np.float32 or (dtype == jnp.bfloat16 and bf16_supported())
  return typed and all(p >= 0 for pair in padding for p in pair)


class Geometry(NamedTuple):
  """A conv's static arguments (hashable: the custom VJPs' non-differentiable argument).
  padding: ((before, after),) * 3; dilation, strides: per axis; groups."""
  padding: tuple
  dilation: tuple = (1, 1, 1)
  strides: tuple = (1, 1, 1)
  groups: int = 1


def _call(target: str, a, b, shape, geometry: Geometry):
  pad = geometry.padding
  attrs = dict(padding=np.array([p[0] for p in pad] + [p[1] for p in pad], np.int64),
               dilation=np.array(geometry.dilation, np.int64),
               strides=np.array(geometry.strides, np.int64), groups=np.int64(geometry.groups))
  return jax.ffi.ffi_call(TARGETS[target], jax.ShapeDtypeStruct(shape, a.dtype),
                          vmap_method="broadcast_all")(a, b, **attrs)


def _out_shape(x_shape, w_shape, g: Geometry) -> tuple:
  spatial = [(x_shape[1 + a] + sum(g.padding[a]) - (w_shape[a] - 1) * g.dilation[a] - 1)
             // g.strides[a] + 1 for a in range(3)]
  return (x_shape[0], *spatial, w_shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _forward(x, w, geometry):
  return _call("forward", x, w, _out_shape(x.shape, w.shape, geometry), geometry)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _backward_data(dy, w, x_shape, geometry):
  return _call("data", dy, w, x_shape, geometry)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _backward_weights(x, dy, w_shape, geometry):
  return _call("weights", x, dy, w_shape, geometry)


# <F(x, w), dy> = <x, Bd(dy, w)> = <w, Bw(x, dy)>: each VJP is made of the other two calls.
def _forward_bwd(geometry, res, dy):
  x, w = res
  return (_backward_data(dy, w, x.shape, geometry),
          _backward_weights(x, dy, w.shape, geometry))


def _data_bwd(x_shape, geometry, res, c):
  dy, w = res
  return _forward(c, w, geometry), _backward_weights(c, dy, w.shape, geometry)


def _weights_bwd(w_shape, geometry, res, c):
  x, dy = res
  return _backward_data(dy, c, x.shape, geometry), _forward(x, c, geometry)


_forward.defvjp(lambda x, w, g: (_forward(x, w, g), (x, w)), _forward_bwd)
_backward_data.defvjp(lambda dy, w, s, g: (_backward_data(dy, w, s, g), (dy, w)), _data_bwd)
_backward_weights.defvjp(lambda x, dy, s, g: (_backward_weights(x, dy, s, g), (x, dy)),
                         _weights_bwd)


def conv3d(x: jax.Array, kernel: jax.Array, padding, dilation=1, strides=1,
           groups: int = 1) -> jax.Array:
  """x [B, D, H, W, C] * kernel [kD, kH, kW, C/groups, O] -> [B, D', H', W', O].

  padding: (before, after) per axis, non-negative; dilation, strides: an int or per axis;
  output channels group-major (lax's feature_group_count); float32 or bfloat16, all
  operands alike (see `supports`).
  """
  ok, why = status()
  if not ok:
    raise RuntimeError(f"the oneDNN convolution is unavailable: {why}")
  triple = lambda v: tuple(int(i) for i in v) if isinstance(v, (tuple, list)) else (int(v),) * 3
  geometry = Geometry(tuple(tuple(int(v) for v in p) for p in padding), triple(dilation),
                      triple(strides), int(groups))
  return _forward(x, kernel, geometry)
