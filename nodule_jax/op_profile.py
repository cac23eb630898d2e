"""Where a compiled step's time goes: XLA's per-instruction trace, summed by kind of work.

XLA's CPU runtime records one trace event per executed instruction (a thunk: a fusion, a
custom call, a dot, a copy ...), named after the HLO instruction, with an "end: NAME"
marker beside it. `jax.profiler.trace` collects them; `op_times` sums their durations per
instruction over a few runs of a step and `by_kind` groups the instructions:

  oneDNN convolutions   the custom calls (`models.onednn`; the only custom calls here)
  XLA convolutions      `convolution` instructions
  matmuls               `dot`s, and fusions holding one
  reductions            fusions holding a reduce (norm statistics, sums, means), reduce-windows
  elementwise           the other fusions (activations, norms' scaling, optimiser)
  data movement         copies, transposes, pads, slices, concatenations, scatters
  other                 everything else, by its HLO opcode

XLA names most fusions for the ops they hold ("multiply_reduce_fusion"), but the ones it
hands to a library (XNNPACK's `ynn_fusion`s) hold a dot or a reduce (the BatchNorms'
statistics): given the compiled HLO text (`fusion_kinds`), a fusion's kind comes from its
fused computation (data-moving ones keep theirs), else from its name (`ynn_fusion`s then
count as matmuls).

Durations are the instructions' own, summed: where XLA runs independent instructions at
the same time the total exceeds the wall time, and the shares are of that total.
"""
from __future__ import annotations

import collections
import gzip
import json
import pathlib
import re
import tempfile
from typing import Callable

import jax

KINDS = ("oneDNN convolutions", "XLA convolutions", "matmuls", "reductions", "elementwise",
         "data movement", "other")
_LIBRARY_FUSIONS = ("ynn", "xnn", "onednn")  # named for the library, not for what they hold
_MOVES = ("copy", "transpose", "pad", "slice", "dynamic-slice", "dynamic-update-slice",
          "concatenate", "scatter", "gather", "select-and-scatter", "reverse", "broadcast")


def op_times(run: Callable[[], object], steps: int = 3) -> dict[str, float]:
  """Mean seconds per call of `run` spent in each XLA instruction (name -> seconds)."""
  with tempfile.TemporaryDirectory() as folder:
    with jax.profiler.trace(folder, create_perfetto_trace=True):
      for _ in range(steps):
        jax.block_until_ready(run())
    trace = next(pathlib.Path(folder).rglob("perfetto_trace.json.gz"))
    events = json.loads(gzip.decompress(trace.read_bytes()))
  events = events["traceEvents"] if isinstance(events, dict) else events
  spans = [e for e in events if e.get("ph") == "X" and "dur" in e]
  instructions = {e["name"][len("end: "):] for e in spans if e["name"].startswith("end: ")}
  times = collections.defaultdict(float)
  for e in spans:
    if e["name"] in instructions:
      times[e["name"]] += e["dur"] * 1e-6 / steps
  return dict(times)


def fusion_kinds(hlo_text: str) -> dict[str, str]:
  """Fusion instruction name -> kind, from the fused computation each calls."""
  bodies = {m.group(1): m.group(2) for m in re.finditer(
      r"^%?([\w.\-]+) \(.*?\) -> .*? \{\n(.*?)\n\}", hlo_text, re.M | re.S)}
  kinds = {}
  for m in re.finditer(r"%([\w.\-]+) = .*? fusion\(.*?calls=%([\w.\-]+)", hlo_text):
    body = bodies.get(m.group(2), "")
    kinds[m.group(1)] = ("XLA convolutions" if " convolution(" in body else
                         "matmuls" if " dot(" in body else
                         "reductions" if re.search(r" reduce(-window)?\(", body) else
                         "elementwise")
  return kinds


def kind(name: str, fusions: dict[str, str] | None = None) -> str:
  """The kind of work of one HLO instruction: from `fusions` (`fusion_kinds`) where it is
  one, else from its name (see the module docstring)."""
  opcode = re.sub(r"\.\d+$", "", name)
  if fusions and name in fusions and _by_name(opcode) != "data movement":
    return fusions[name]
  return _by_name(opcode)


def _by_name(opcode: str) -> str:
  """The kind an instruction's opcode (its name without the ".N") says."""
  if opcode.startswith(("custom-call", "ffi_call")):
    return "oneDNN convolutions"
  if opcode.startswith("convolution"):
    return "XLA convolutions"
  if opcode.startswith(("dot", *_LIBRARY_FUSIONS)):
    return "matmuls"
  if "fusion" in opcode:
    return "reductions" if "reduce" in opcode or opcode.startswith("input") else "elementwise"
  if opcode in _MOVES:
    return "data movement"
  if opcode.startswith("reduce"):
    return "reductions"
  if opcode.startswith("wrapped_"):        # one op XLA did not fuse with others
    wrapped = opcode[len("wrapped_"):]
    if wrapped in _MOVES:
      return "data movement"
    return "reductions" if wrapped.startswith("reduce") else "elementwise"
  return "other"


def by_kind(times: dict[str, float], fusions: dict[str, str] | None = None
            ) -> list[tuple[str, float, float]]:
  """[(kind, seconds, share of the total)] in `KINDS` order, kinds with no time left out;
  fusions: `fusion_kinds` of the step's HLO."""
  total = sum(times.values()) or 1.0
  sums = collections.defaultdict(float)
  for name, seconds in times.items():
    sums[kind(name, fusions)] += seconds
  return [(k, sums[k], sums[k] / total) for k in KINDS if sums[k] > 0]


def top(times: dict[str, float], n: int = 5) -> list[tuple[str, float]]:
  """The n instructions that took longest: [(name, seconds)]."""
  return sorted(times.items(), key=lambda item: -item[1])[:n]
