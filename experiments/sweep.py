"""Runs the Table 2 grid by config overrides, skipping finished runs.

  python -m experiments.sweep --config configs/table2.py[:demo] --workdir DIR \
      [--config.processes=2] [--config.synthetic_dirs='("SYN_DIR",)']

Each run is `python -m experiments.train --config configs/classify.py:...` in
DIR/<strategy>/<arch>/seed<k>/ (its output in log.txt); a run is finished when it wrote
metrics.json, so a killed sweep picks up where it stopped (and each run resumes itself).
"""
import os
import pathlib
import subprocess
import sys
import time

from absl import app, flags
from experiments import cli
from ml_collections import config_flags


CLASSIFY = pathlib.Path(__file__).resolve().parent.parent / "configs" / "classify.py"


def run_dir(workdir, strategy: str, arch: str, seed: int) -> pathlib.Path:
  return pathlib.Path(workdir) / strategy / arch / f"seed{seed}"


def commands(grid, workdir) -> list[tuple[pathlib.Path, list[str]]]:
  """(run folder, command) for every unfinished run of the grid."""
  out = []
  for strategy in grid.strategies:
    for arch in grid.archs:
      for seed in grid.seeds:
        folder = run_dir(workdir, strategy, arch, seed)
        if (folder / "metrics.json").exists():
          continue
        cmd = [sys.executable, "-m", "experiments.train", "--workdir", str(folder),
               "--config", f"{CLASSIFY}:{grid.classify_variant},arch={arch},strategy={strategy}",
               f"--config.seed={seed}"]
        if grid.data_dir:
          cmd.append(f"--config.data.data_dir={grid.data_dir}")
        if strategy == "synthesis":
          cmd.append(f"--config.data.synthetic_dirs={tuple(grid.synthetic_dirs)!r}")
        if grid.init_from_dir:
          cmd.append(f"--config.init_from={pathlib.Path(grid.init_from_dir) / arch}")
        out.append((folder, cmd + list(grid.overrides)))
  return out


def run_all(todo, processes: int) -> list[pathlib.Path]:
  """Runs the commands, `processes` at a time; returns the folders of failed runs."""
  running, failed, pending = [], [], list(todo)
  total, done = len(todo), 0
  while pending or running:
    while pending and len(running) < processes:
      folder, cmd = pending.pop(0)
      folder.mkdir(parents=True, exist_ok=True)
      log = open(folder / "log.txt", "a")
      running.append((folder, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
      print(f"[{done}/{total}] started {folder}", flush=True)
    for item in list(running):
      folder, proc, log = item
      if proc.poll() is None:
        continue
      running.remove(item)
      log.close()
      done += 1
      status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}, see log.txt)"
      if proc.returncode:
        failed.append(folder)
      print(f"[{done}/{total}] {status}: {folder}", flush=True)
    time.sleep(0.5)
  return failed


def main(argv):
  del argv
  grid, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  if "synthesis" in grid.strategies and not grid.synthetic_dirs:
    raise app.UsageError("strategy synthesis needs --config.synthetic_dirs (shards from "
                         "`python -m experiments.synthesize`), or drop it from "
                         "--config.strategies")
  grid.data_dir = cli.data_dir_or_phantom(grid.data_dir)  # once, not in every run
  todo = commands(grid, workdir)
  n = len(grid.strategies) * len(grid.archs) * len(grid.seeds)
  print(f"{n} runs in the grid, {n - len(todo)} already finished, {len(todo)} to run")
  failed = run_all(todo, grid.processes)
  if failed:
    sys.exit(f"{len(failed)} run(s) failed: " + ", ".join(map(str, failed)))
  print(f"all runs finished; now: python -m experiments.table2 --workdir {workdir}")


def define_flags() -> None:
  """The flags of this entry point (defined when it runs, so that others can import it)."""
  config_flags.DEFINE_config_file("config", None, "Grid config (configs/table2.py[:demo]).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Root of the runs.", required=True)
  flags.mark_flags_as_required(["config"])


if __name__ == "__main__":
  define_flags()
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  cli.run(main)
