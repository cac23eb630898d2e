"""Two JAX processes on loopback (gloo), each with 2 fake CPU devices, read their own halves
of the shards and assemble one global batch."""
import json
import os
import sys
import time

import pytest


@pytest.mark.slow
def test_two_processes_share_one_global_batch(built, monkeypatch):
  from experiments.launch_local import launch
  here = os.path.dirname(os.path.abspath(__file__))
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [os.path.dirname(here),
                                                                 os.environ.get("PYTHONPATH")])))
  status, outputs = launch([sys.executable, os.path.join(here, "multihost_worker.py"),
                            str(built[0])], processes=2, devices_per_process=2, timeout=300,
                           echo=False)
  assert status == 0, outputs[0][-3000:] + outputs[1][-3000:]
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
