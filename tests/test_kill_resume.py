"""Kill anywhere, finish identical: a training process SIGKILLed when it is about to
checkpoint (its steps since the last checkpoint lost) and while a checkpoint is being
written, restarted each time with the same command, ends bit-identical to an uninterrupted
run; the half-written checkpoint is never taken as the latest, nor one the disk had no
room for."""
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from nodule_jax.checkpoint import Checkpointer

HERE = os.path.dirname(os.path.abspath(__file__))


def _train(workdir, mode: str, step: int, args: list[str]) -> str:
  """experiments.train on 2 CPU devices through kill_worker.py; its output and errors.
  Checks that it finished (mode "none"), failed (disk_full) or died of SIGKILL."""
  env = {**os.environ, "PYTHONPATH": os.path.dirname(HERE), "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  proc = subprocess.run([sys.executable, os.path.join(HERE, "kill_worker.py"), mode, str(step),
                         "--", *args, f"--workdir={workdir}"],
                        env=env, capture_output=True, text=True, timeout=900)
  expected = {"none": 0, "disk_full": 1}.get(mode, -signal.SIGKILL)
  assert proc.returncode == expected, proc.stdout[-2000:] + proc.stderr[-3000:]
  return proc.stdout + proc.stderr


def _final_checkpoint(workdir) -> tuple[int, dict]:
  checkpointer = Checkpointer(workdir / "checkpoints")
  step = checkpointer.latest_step()
  tree = jax.device_get(checkpointer.restore(None))
  checkpointer.close()
  return step, {jax.tree_util.keystr(p): np.asarray(x)
                for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.slow
@pytest.mark.parametrize("task", ["synthesis", "classify"])
def test_killed_anywhere_and_restarted_ends_bit_identical(task, built, shards, tmp_path):
  if task == "synthesis":
    args = ["--config=configs/synthesis.py:smoke", f"--config.data.data_dir={built[0]}",
            "--config.num_steps=6", "--config.checkpoint_every=2"]
    every = 2
  else:
    real, _, counts = shards
    args = ["--config=configs/classify.py:smoke", f"--config.data.data_dir={real}",
            "--config.epochs=3"]
    every = max(int(counts["train"].sum()) // 8, 1)   # a checkpoint per epoch
  kill, ref, run = 2 * every, tmp_path / "uninterrupted", tmp_path / "killed"
  _train(ref, "none", 0, args)

  _train(run, "before_save", kill, args)           # steps every+1 .. kill are lost
  assert Checkpointer(run / "checkpoints").latest_step() == every
  _train(run, "during_save", kill, args)           # the checkpoint of `kill` is half-written
  assert Checkpointer(run / "checkpoints").latest_step() == every
  assert list(run.rglob("*orbax-checkpoint-tmp*")), "the kill did not land inside a save"
  if task == "synthesis":                          # the disk fills up during that save
    err = _train(run, "disk_full", kill, args)
    assert (f"writing the checkpoint of step {kill} to {run / 'checkpoints'} failed" in err
            and f"the last complete checkpoint (step {every}) is kept" in err), err[-3000:]
    assert Checkpointer(run / "checkpoints").latest_step() == every
  out = _train(run, "none", 0, args)
  assert f"Resuming from the checkpoint at step {every}" in out

  (step_a, a), (step_b, b) = _final_checkpoint(ref), _final_checkpoint(run)
  assert step_a == step_b == 3 * every and a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  if task == "classify":
    for name in ("metrics.json", "best.json", "predictions_validation.csv",
                 "predictions_test.csv"):
      assert (ref / name).read_bytes() == (run / name).read_bytes(), name
    assert json.loads((run / "metrics.json").read_text())["selected_step"] > 0
