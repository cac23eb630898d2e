"""Two JAX processes on loopback (gloo), each with 2 fake CPU devices, read their own halves
of the shards and assemble one global batch."""
import json
import os
import socket
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_two_processes_share_one_global_batch(built):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  here = os.path.dirname(os.path.abspath(__file__))
  procs = []
  for i in range(2):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu", "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
           "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i),
           "PYTHONPATH": os.pathsep.join(filter(None, [os.path.dirname(here),
                                                       os.environ.get("PYTHONPATH")]))}
    procs.append(subprocess.Popen([sys.executable, os.path.join(here, "multihost_worker.py"),
                                   str(built[0])], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  results = []
  for p in procs:
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out[-3000:]
    results.append(json.loads(out.split("RESULT ", 1)[1].splitlines()[0]))
  a, b = sorted(results, key=lambda r: r["process"])
  assert a["processes"] == b["processes"] == 2 and a["devices"] == 4
  assert a["shape"] == b["shape"] == [4, 32, 64, 64, 1]
  assert a["global_sum"] == pytest.approx(b["global_sum"])
  assert a["global_sum"] == pytest.approx(a["local_sum"] + b["local_sum"], rel=1e-5)
  assert a["local_sum"] != b["local_sum"]  # each host read its own half of the shards
