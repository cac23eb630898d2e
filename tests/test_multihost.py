"""Two JAX processes on loopback (gloo), each with 2 fake CPU devices: one global batch from
their halves of the stream, and both trainers end to end equal to one 4-device process."""
import json
import os
import sys
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _launch(monkeypatch, *args: str) -> list[str]:
  """Runs multihost_worker.py with `args` as 2 processes × 2 devices; their outputs."""
  from experiments.launch_local import launch
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [os.path.dirname(HERE),
                                                                 os.environ.get("PYTHONPATH")])))
  status, outputs = launch([sys.executable, os.path.join(HERE, "multihost_worker.py"), *args],
                           processes=2, devices_per_process=2, timeout=600, echo=False)
  assert status == 0, outputs[0][-3000:] + outputs[1][-3000:]
  return outputs


@pytest.mark.slow
def test_two_processes_share_one_global_batch(built, monkeypatch):
  outputs = _launch(monkeypatch, "batch", str(built[0]))
  results = [json.loads(out.split("RESULT ", 1)[1].splitlines()[0]) for out in outputs]
  a, b = sorted(results, key=lambda r: r["process"])
  assert a["processes"] == b["processes"] == 2 and a["devices"] == 4
  assert a["shape"] == b["shape"] == [4, 32, 64, 64, 1]
  assert a["global_sum"] == pytest.approx(b["global_sum"])
  assert a["global_sum"] == pytest.approx(a["local_sum"] + b["local_sum"], rel=1e-5)
  assert a["local_sum"] != b["local_sum"]  # each host read its own half of the shards


def test_launch_local_stops_the_others_when_one_fails_and_prefixes_lines(capsys):
  from experiments.launch_local import launch, main
  code = ("import os, time; i = int(os.environ['JAX_PROCESS_ID']); print('hello', i, "
          "os.environ['JAX_NUM_PROCESSES'], os.environ['XLA_FLAGS'], flush=True); "
          "time.sleep(0.5); raise SystemExit(3) if i == 1 else time.sleep(60)")
  start = time.monotonic()
  status, outputs = launch([sys.executable, "-c", code], processes=2, devices_per_process=3,
                           timeout=30)
  assert status == 3 and time.monotonic() - start < 20  # process 0 was stopped, not awaited
  assert "hello 0 2" in outputs[0]
  assert "--xla_force_host_platform_device_count=3" in outputs[0].split("hello 0 2", 1)[1]
  assert "[process 1] hello 1" in capsys.readouterr().out
  assert main(["--processes", "1", "--", sys.executable, "-c", "print('ok')"]) == 0


@pytest.mark.slow
@pytest.mark.parametrize("task", ["synthesis", "classify"])
def test_two_processes_train_resume_and_evaluate_like_one(task, built, shards, tmp_path,
                                                          monkeypatch):
  """2 processes × 2 devices, stopped after half the run and resumed, against one process on
  4 devices straight through: the same global batches, so the same parameters and metrics
  up to the collectives' summation order."""
  import jax

  from experiments.train import train
  from multihost_worker import final_params, smoke_config
  data_dir = str(built[0] if task == "synthesis" else shards[0])
  steps = 4 if task == "synthesis" else 2
  multi = tmp_path / "multi"
  _launch(monkeypatch, "train", task, data_dir, str(multi), str(steps // 2))
  out = _launch(monkeypatch, "train", task, data_dir, str(multi), str(steps))
  assert "Resuming from the checkpoint" in out[0] and "Resuming from the checkpoint" in out[1]
  config = smoke_config(task, data_dir, steps)
  config.num_devices = 4
  single = final_params(task, train(config, tmp_path / "single"))
  with np.load(multi / "params.npz") as saved:
    flat = jax.tree_util.tree_flatten_with_path(single)[0]
    assert sorted(saved.files) == sorted(jax.tree_util.keystr(p) for p, _ in flat)
    # Adam moves a weight by about lr a step whatever its gradient's size, so a vanishing
    # gradient whose sign the summation order flips moves that weight by up to ~2 lr a step:
    # allow that in a handful of weights (a wrong batch or a lost step moves nearly all).
    off, total = 0, 0
    for path, leaf in flat:
      name = jax.tree_util.keystr(path)
      got = saved[name]
      off += np.count_nonzero(~np.isclose(got, leaf, rtol=1e-4, atol=1e-5))
      total += leaf.size
      np.testing.assert_allclose(got, leaf, atol=10 * config.optim.lr * steps, err_msg=name)
    assert off <= 1e-3 * total, (off, total)
  if task == "classify":
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (multi, tmp_path / "single"))
    assert a["selected_step"] == b["selected_step"]
    for split in ("validation", "test"):
      pa, pb = (_predictions(d / f"predictions_{split}.csv") for d in (multi, tmp_path / "single"))
      assert pa.keys() == pb.keys()
      np.testing.assert_allclose([pa[k] for k in sorted(pa)], [pb[k] for k in sorted(pb)],
                                 atol=1e-4)


def _predictions(path) -> dict:
  from nodule_jax.metrics import read_predictions
  pred = read_predictions(path)
  return dict(zip(pred["nodule_id"], pred["prob"]))
