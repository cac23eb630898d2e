"""Step-time benchmark of the in-painting GAN against this machine's measured peak.

  python -m experiments.benchmark --config configs/synthesis.py[:demo] [--steps 5] [--roofline]
  python -m experiments.benchmark --config configs/synthesis.py[:demo] --vs-torch \
      [--torch_arch resnet-50 --torch_batch 16] [--profile]
  python -m experiments.benchmark --config configs/synthesis.py:demo --data

Prints, for a critic step (with gradient penalty) and a generator step at the config's batch
size: compile time, median step time after warm-up, XLA's FLOP count per step, achieved
GFLOP/s, the dense fp32 peak measured in the same run (a large jit'd matmul), and the ratio.
With --roofline it only compiles and prints, from XLA's FLOP and byte counts, a roofline
estimate of each GAN step and of the classifiers' train steps on accelerators
(`ACCELERATORS`: the peaks assumed, from the vendors' data sheets): max(FLOP / peak FLOP/s,
bytes / HBM bandwidth). An estimate, not a measurement: the CPU compile's byte count stands
in for the accelerator's fusion.
With --vs-torch it times, alternately in this process, one Adam step of the config's two
critics (with gradient penalty), of its generator and of a Hara 3D ResNet, and one
synthesis batch, in JAX and in PyTorch twins holding the same weights
(`nodule_jax.vs_torch`), after checking that their outputs and first losses agree;
`ratio` = PyTorch time / JAX time (> 1: JAX is faster); and one 3×3×3 conv in float32 and
in bfloat16 in both; with --profile, where each JAX step's time goes. With --data:
patches/s of the shard build and of the input pipeline against the GAN's consumption.
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


# name -> (dense bf16 FLOP/s, fp32 FLOP/s, HBM bytes/s), the whole device or slice. H100
# fp32: the non-tensor-core rate; TPU fp32: a quarter of bf16 (XLA's multi-pass f32 matmuls
# on the MXU) — an assumption, not a data-sheet number.
ACCELERATORS = {
    "H100 SXM": (989e12, 67e12, 3.35e12),
    "TPU v5e-8": (8 * 197e12, 8 * 197e12 / 4, 8 * 819e9),
}


def roofline(rows: list[dict]) -> list[str]:
  """Markdown rows: per step and accelerator, the bound and estimated ms (bf16 / fp32)."""
  lines = ["| step | GFLOP | GB accessed | accelerator | bf16 ms (bound) | fp32 ms (bound) |",
           "|---|---:|---:|---|---:|---:|"]
  for r in rows:
    for name, (bf16, fp32, bandwidth) in ACCELERATORS.items():
      cells = []
      for peak, scale in ((bf16, 0.5), (fp32, 1.0)):  # bf16 moves half the bytes
        compute, memory = r["gflop"] * 1e9 / peak, r["gbytes"] * 1e9 * scale / bandwidth
        bound = "compute" if compute >= memory else "memory"
        cells.append(f"{1e3 * max(compute, memory):.1f} ({bound})")
      lines.append(f"| {r['name']} | {r['gflop']:.1f} | {r['gbytes']:.1f} | {name} | "
                   f"{cells[0]} | {cells[1]} |")
  return lines


def benchmark_steps(config, steps: int, run_steps: bool = True,
                    conv_impl: str = "auto") -> list[dict]:
  """Compiles (and with run_steps times) a critic and a generator step, their convolutions
  traced under `layers.conv_impl(conv_impl)`."""
  from nodule_jax.models import layers
  with layers.conv_impl(conv_impl):
    return _benchmark_steps(config, steps, run_steps)


def _benchmark_steps(config, steps: int, run_steps: bool) -> list[dict]:
  import numpy as np

  from nodule_jax import train_synthesis
  from nodule_jax.inpaint import build_models, working_shape
  from nodule_jax.masks import sphere_mask
  from nodule_jax.sharding import make_mesh, to_global
  from nodule_jax.vs_torch import model_flops, xla_cost
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
  make_steps = lambda: train_synthesis.compile_steps(config, models, tx_g, tx_d, mesh, sharding)
  rows = []
  for i, (name, step) in enumerate(zip(("critic step (with GP)", "generator step"),
                                       make_steps())):
    t = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t
    if not run_steps:
      rows.append(dict(name=name, compile_s=compile_s, gflop=xla_cost(compiled) / 1e9,
                       gbytes=xla_cost(compiled, "bytes accessed") / 1e9))
      continue
    holder = {"state": state}

    def run():
      holder["state"], metrics = compiled(holder["state"], batch)
      return metrics

    run()  # warm-up
    seconds = _median_time(run, steps)
    state = holder["state"]
    flops = model_flops(compiled, lambda: make_steps()[i], state, batch)
    rows.append(dict(name=name, compile_s=compile_s, step_s=seconds, gflop=flops / 1e9,
                     gflops=flops / seconds / 1e9))
  return rows


CLASSIFIERS = ("resnet-50", "resnet-101", "resnet-152", "resnext-101")


def classifier_cost_rows(archs=CLASSIFIERS, batch: int = 16) -> list[dict]:
  """Compiles (never runs) the classifiers' train step (`train_classifier.train_step`, SGD
  with momentum, the patch [32, 64, 64, 1]) with XLA's convolutions, as on accelerators:
  per arch XLA's GFLOP and GB accessed per step."""
  import functools

  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  from nodule_jax import train_classifier
  from nodule_jax.models import layers, resnet3d
  from nodule_jax.vs_torch import xla_cost
  rows = []
  for arch in archs:
    model, tx = resnet3d.create(arch, 2, jnp.float32), optax.sgd(1e-3, momentum=0.9)
    state = jax.eval_shape(functools.partial(train_classifier.init_state, model=model, tx=tx),
                           jax.random.PRNGKey(0))
    batch_spec = {"image": jax.ShapeDtypeStruct((batch, *train_classifier.INPUT_SHAPE),
                                                jnp.float32),
                  "label": jax.ShapeDtypeStruct((batch,), jnp.int32)}
    step = functools.partial(train_classifier.train_step, model=model, tx=tx,
                             weights=np.ones(2, np.float32))
    start = time.perf_counter()
    with layers.conv_impl("xla"):
      compiled = jax.jit(step).lower(state, batch_spec).compile()
    rows.append(dict(name=f"{arch} train step, batch {batch}",
                     compile_s=time.perf_counter() - start, gflop=xla_cost(compiled) / 1e9,
                     gbytes=xla_cost(compiled, "bytes accessed") / 1e9))
  return rows


def data_throughput(config, workdir: str, patient_id: str = "LIDC-IDRI-0742", factor: int = 1,
                    batches: int = 40) -> dict:
  """Patches per second of the shard build on one phantom scan (512/factor in-plane, all its
  slices) and of the training input pipeline on the built-in phantom's shards, against what
  the config's GAN training iteration consumes ((n_critic + 1) batches; its steps timed
  here)."""
  import pathlib

  from data_prep.build import build
  from data_prep.phantom import make_phantom
  from experiments.cli import data_dir_or_phantom
  from nodule_jax import input_pipeline, train_synthesis
  out = pathlib.Path(workdir)
  scan = make_phantom(str(out / "dicom"), [patient_id], factor=factor, progress=False)
  start = time.perf_counter()
  entries = build(str(out / "dicom"), str(out / "shards"), patient_ids=[patient_id],
                  workers=1, progress=False)
  build_s = time.perf_counter() - start
  stream = input_pipeline.train_stream(data_dir_or_phantom(None), config.batch_size,
                                       aug=train_synthesis.augmentation(config)
                                       ).as_numpy_iterator()
  next(stream)
  start = time.perf_counter()
  for _ in range(batches):
    next(stream)
  pipeline_s = time.perf_counter() - start
  critic, generator = benchmark_steps(config, 3)
  iteration_s = config.n_critic * critic["step_s"] + generator["step_s"]
  return dict(matrix=512 // factor, slices=scan["scans"][patient_id]["slices"],
              patches=len(entries), build_s=build_s,
              pipeline=batches * config.batch_size / pipeline_s,
              consumed=(config.n_critic + 1) * config.batch_size / iteration_s)


def data_rows(r: dict, config) -> list[str]:
  """`data_throughput`'s numbers as markdown rows."""
  return ["| stage | patches/s | |", "|---|---:|---|",
          f"| shard build, one {r['matrix']}×{r['matrix']}×{r['slices']} phantom scan "
          f"({r['patches']} patches) | {r['patches'] / r['build_s']:.2f} | "
          f"{r['build_s']:.1f} s |",
          f"| input pipeline (decode, augment, batch {config.batch_size}) | "
          f"{r['pipeline']:.0f} | |",
          f"| the {config.variant} GAN's training iteration consumes | {r['consumed']:.1f} | "
          f"pipeline / consumption = {r['pipeline'] / r['consumed']:.0f}× |"]


def vs_torch(config, steps: int, arch: str, batch: int, conv_channels: int,
             profile: bool = False) -> None:
  """Prints JAX vs PyTorch on the config's critics, generator step, synthesis batch, on
  Hara's `arch`, and on one conv in float32 and bfloat16 (nodule_jax.vs_torch); with
  `profile`, where each JAX step's time goes (`nodule_jax.op_profile`)."""
  from nodule_jax import op_profile
  from nodule_jax import vs_torch as twins
  rows, profiles = [], []
  for make in (lambda: twins.critic_pair(config), lambda: twins.generator_pair(config),
               lambda: twins.synthesis_pair(config), lambda: twins.classifier_pair(arch, batch),
               *(lambda dtype=dtype: twins.conv_pair(conv_channels, dtype=dtype)
                 for dtype in ("float32", "bfloat16"))):
    pair = make()
    rows.append(twins.time_pair(pair, steps))
    if profile:
      profiles.append((pair.name, op_profile.op_times(pair.jax_step, steps), pair.hlo))
  peak = matmul_peak()
  print(f"config: {config.variant}; measured dense fp32 peak (2048² matmul, JAX): "
        f"{peak:.1f} GFLOP/s; PyTorch on {rows[0]['torch_threads']} threads; medians of "
        f"{steps} alternating steps after a warm-up step")
  print("| workload | JAX s | PyTorch s | ratio PyTorch/JAX | GFLOP | JAX GFLOP/s (of peak) | "
        "PyTorch GFLOP/s (of peak) | JAX compile s | peak RSS GB | outputs, first loss |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
  for r in rows:
    achieved = {k: r["gflop"] / r[f"{k}_s"] for k in ("jax", "torch")}
    print(f"| {r['name']} | {r['jax_s']:.3f} | {r['torch_s']:.3f} | ratio {r['ratio']:.2f} | "
          f"{r['gflop']:.1f} | {achieved['jax']:.1f} ({achieved['jax'] / peak:.0%}) | "
          f"{achieved['torch']:.1f} ({achieved['torch'] / peak:.0%}) | {r['compile_s']:.1f} | "
          f"{r['peak_rss_gb']:.1f} | equal to {r['max_difference']:.0e}, "
          f"{r['loss_difference']:.0e} |")
  if profiles:
    print("\n".join(profile_rows(profiles)))


def profile_rows(profiles: list[tuple[str, dict, str]]) -> list[str]:
  """A table: per workload (name, instruction times, compiled HLO text), the share of its JAX
  instructions' time by kind of work, and the longest instruction."""
  from nodule_jax.op_profile import KINDS, by_kind, fusion_kinds, kind, top
  lines = ["JAX time by kind of work (XLA's per-instruction trace; shares of the instructions' "
           "summed time)",
           "| workload | ms | " + " | ".join(KINDS) + " | longest instruction |",
           "|---|---:|" + "---:|" * len(KINDS) + "---|"]
  for name, times, hlo in profiles:
    fusions = fusion_kinds(hlo)
    shares = {k: share for k, _, share in by_kind(times, fusions)}
    longest, seconds = top(times, 1)[0]
    lines.append(f"| {name} | {sum(times.values()) * 1e3:.1f} | "
                 + " | ".join(f"{shares.get(k, 0):.0%}" for k in KINDS)
                 + f" | {longest} ({kind(longest, fusions)}, {seconds * 1e3:.1f} ms) |")
  return lines


def main(argv):
  del argv
  cli.quiet_logs()
  config = flags.FLAGS.config
  import jax
  if flags.FLAGS["vs-torch"].value:
    vs_torch(config, flags.FLAGS.steps, flags.FLAGS.torch_arch, flags.FLAGS.torch_batch,
             flags.FLAGS.conv_channels, flags.FLAGS.profile)
    return
  if flags.FLAGS.roofline:
    rows = benchmark_steps(config, 0, run_steps=False, conv_impl="xla")  # as on accelerators
    rows += classifier_cost_rows(flags.FLAGS.roofline_classifiers, flags.FLAGS.torch_batch)
    print(f"config: {config.variant}, batch {config.batch_size}: roofline estimates "
          f"(peaks assumed: {ACCELERATORS})")
    print("\n".join(roofline(rows)))
    return
  if flags.FLAGS.data:
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
      print("\n".join(data_rows(data_throughput(config, tmp), config)))
    return
  impls = flags.FLAGS.conv_impls
  runs = {impl: benchmark_steps(config, flags.FLAGS.steps, conv_impl=impl) for impl in impls}
  peak = matmul_peak()
  print(f"config: {config.variant}, batch {config.batch_size}, width {config.model.width}, "
        f"{jax.device_count()} {jax.default_backend()} device(s)")
  print(f"measured dense fp32 peak (2048² matmul): {peak:.1f} GFLOP/s")
  print("| step | conv_impl | compile s | median step s | GFLOP/step | GFLOP/s | of peak |")
  print("|---|---|---:|---:|---:|---:|---:|")
  for impl, rows in runs.items():
    for r in rows:
      print(f"| {r['name']} | {impl} | {r['compile_s']:.1f} | {r['step_s']:.3f} | "
            f"{r['gflop']:.2f} | {r['gflops']:.1f} | {r['gflops'] / peak:.1%} |")
  n = config.n_critic
  iteration = {impl: n * rows[0]["step_s"] + rows[1]["step_s"] for impl, rows in runs.items()}
  for impl, seconds in iteration.items():
    line = f"one training iteration ({n} critic + 1 generator step), {impl}: {seconds:.2f} s"
    if impl != impls[0]:
      line += f" ({seconds / iteration[impls[0]]:.2f}× the {impls[0]} time)"
    print(line)


def define_flags() -> None:
  """The flags of this entry point (defined when it runs, so that others can import it)."""
  config_flags.DEFINE_config_file("config", None, "GAN config (path[:variant]).", lock_config=True)
  flags.DEFINE_integer("steps", 5, "Timed steps after one warm-up step.")
  flags.DEFINE_list("conv_impls", ["auto", "xla"], "Time the steps with each of these "
                    "layers.conv_impl choices (auto: oneDNN on one CPU device), in one run.")
  flags.DEFINE_bool("roofline", False, "Compile only; print roofline estimates for "
                    "accelerators from XLA's FLOP and byte counts.")
  flags.DEFINE_bool("vs-torch", False, "Time the critics and a Hara 3D ResNet against "
                    "PyTorch twins with the same weights (needs the `torch` extra).")
  flags.DEFINE_string("torch_arch", "resnet-50", "--vs-torch: the classifier (resnet-18, "
                      "resnet-50, resnext-101).")
  flags.DEFINE_integer("torch_batch", 16, "--vs-torch and --roofline: the classifiers' batch.")
  flags.DEFINE_list("roofline_classifiers", list(CLASSIFIERS), "--roofline: the classifiers "
                    "whose train step (batch --torch_batch) is estimated too.")
  flags.DEFINE_bool("data", False, "Patches/s of the shard build (one full-size phantom "
                    "scan) and of the input pipeline, against the config's GAN consumption.")
  flags.DEFINE_bool("profile", False, "--vs-torch: also print where each JAX step's time "
                    "goes, by kind of work (XLA's per-instruction trace).")
  flags.DEFINE_integer("conv_channels", 64, "--vs-torch: channels of the single-conv rows "
                       "(float32 and bfloat16).")
  flags.mark_flags_as_required(["config"])


if __name__ == "__main__":
  define_flags()
  cli.run(main)
