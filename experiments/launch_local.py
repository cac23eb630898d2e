"""A multi-process JAX job on this machine, to try multi-host behaviour without a cluster.

  python -m experiments.launch_local --processes 2 --devices_per_process 2 -- \
      python -m experiments.train --config configs/synthesis.py:smoke --workdir DIR

Starts the command `--processes` times with JAX's distributed runtime on 127.0.0.1 (a free
port; gloo CPU collectives): JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID and
`--devices_per_process` fake CPU devices each (`experiments.train` and the trainers call
`jax.distributed.initialize()` from these). Every output line is prefixed with [process i].
If one process fails the others are stopped; the exit status is the first failure's.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Sequence


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(index: int, processes: int, devices: int, port: int) -> dict[str, str]:
  """The environment of process `index`: the coordinator, its id and its CPU devices."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  return {**os.environ, "JAX_PLATFORMS": "cpu",
          "XLA_FLAGS": " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"]),
          "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": str(processes),
          "JAX_PROCESS_ID": str(index)}


def _relay(index: int, stream, sink: list[str], echo: bool) -> None:
  for line in stream:
    sink.append(line)
    if echo:
      sys.stdout.write(f"[process {index}] {line}")
      sys.stdout.flush()


def launch(command: Sequence[str], processes: int = 2, devices_per_process: int = 2,
           timeout: float | None = None, echo: bool = True) -> tuple[int, list[str]]:
  """Runs `command` as `processes` JAX processes; returns (exit status: 0, the first
  failure's (128 + N for signal N), or 124 past `timeout` seconds; each one's output)."""
  if not command:
    raise ValueError("no command to launch (give it after --)")
  port = free_port()
  procs = [subprocess.Popen(list(command), env=process_env(i, processes, devices_per_process, port),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own group: stop its children too
           for i in range(processes)]
  outputs: list[list[str]] = [[] for _ in procs]
  relays = [threading.Thread(target=_relay, args=(i, p.stdout, outputs[i], echo), daemon=True)
            for i, p in enumerate(procs)]
  for t in relays:
    t.start()
  status, pending = 0, list(procs)
  deadline = None if timeout is None else time.monotonic() + timeout
  try:
    while pending and not status:
      for p in [p for p in pending if p.poll() is not None]:
        pending.remove(p)
        status = status or p.returncode
      if deadline is not None and time.monotonic() > deadline:
        status = 124  # timeout(1)'s status
      time.sleep(0.2)
  finally:
    for p in procs:  # one failed (or we were interrupted): the others would wait forever
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    for t in relays:
      t.join(timeout=5)
    for p in procs:
      p.stdout.close()
  return status if status >= 0 else 128 - status, ["".join(o) for o in outputs]


def main(argv: list[str]) -> int:
  import argparse
  parser = argparse.ArgumentParser(prog="python -m experiments.launch_local",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=2)
  parser.add_argument("command", nargs=argparse.REMAINDER)
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not command:
    parser.error("give the command after --")
  status, _ = launch(command, args.processes, args.devices_per_process)
  return status


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
