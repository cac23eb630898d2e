"""`experiments.train` that SIGKILLs itself at a chosen point, or finds its disk full
(run by test_kill_resume.py).

  kill_worker.py none|before_save|during_save|disk_full STEP -- TRAIN_ARGS...

before_save: killed when the trainer asks to checkpoint STEP (its steps since the last
checkpoint are lost). during_save: killed while the checkpoint of STEP is being written, once
its files are on disk and before orbax renames it into place. disk_full: from the
checkpoint of STEP on, no file may grow past 4 KiB (RLIMIT_FSIZE: writes fail with EFBIG).
"""
import os
import resource
import signal
import sys

import orbax.checkpoint._src.path.atomicity as atomicity

from nodule_jax.checkpoint import Checkpointer


def _die(*args, **kwargs):
  os.kill(os.getpid(), signal.SIGKILL)


def arm(mode: str, kill_step: int) -> None:
  save = Checkpointer.save

  def save_or_die(self, step, state):
    if step == kill_step and mode == "before_save":
      _die()
    if step == kill_step and mode == "during_save":
      atomicity.AtomicRenameTemporaryPath.finalize = _die
    if step == kill_step and mode == "disk_full":
      signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
      resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
    return save(self, step, state)

  Checkpointer.save = save_or_die


if __name__ == "__main__":
  mode, step, dashes, *train_args = sys.argv[1:]
  assert mode in ("none", "before_save", "during_save", "disk_full") and dashes == "--"
  arm(mode, int(step))
  from experiments import cli, train
  train.define_flags()
  sys.argv = ["train", *train_args]
  cli.run(train.main)
