"""The benchmark: roofline arithmetic, the classifiers' step costs, the data rates."""
import pytest


def test_roofline_estimate_by_hand():
  from experiments.benchmark import ACCELERATORS, roofline
  bf16, fp32, bandwidth = ACCELERATORS["H100 SXM"]
  compute_bound = dict(name="a", gflop=bf16 / 1e9, gbytes=0.0)               # 1 s of bf16
  memory_bound = dict(name="b", gflop=0.0, gbytes=2 * bandwidth / 1e9)        # 1 s of bf16 bytes
  lines = roofline([compute_bound, memory_bound])
  h100 = [line for line in lines if "H100" in line]
  assert "| 1000.0 (compute) |" in h100[0]
  assert f"| {1e3 * bf16 / fp32:.1f} (compute) |" in h100[0]
  assert "| 1000.0 (memory) | 2000.0 (memory) |" in h100[1]


def test_classifier_step_costs_grow_with_the_batch():
  """The classifiers' roofline rows: XLA's FLOPs of a train step, compiled without running,
  are proportional to the batch (the convolutions dominate)."""
  from experiments.benchmark import classifier_cost_rows
  small, large = (classifier_cost_rows(("tiny",), batch)[0] for batch in (2, 4))
  assert small["name"] == "tiny train step, batch 2" and small["gbytes"] > 0
  assert 1.9 < large["gflop"] / small["gflop"] < 2.05


@pytest.mark.slow
def test_data_throughput_builds_a_scan_and_times_the_pipeline(tmp_path):
  """--data on one small phantom scan: every patch the build reports is in its shards, and
  the rates are measured (positive) and printed."""
  import tensorflow_datasets as tfds

  from configs.synthesis import get_config
  from data_prep.tfds_builder import shard_dir
  from experiments.benchmark import data_rows, data_throughput
  config = get_config("smoke")
  config.num_devices = 1
  r = data_throughput(config, str(tmp_path), patient_id="LIDC-IDRI-0007", factor=4, batches=2)
  builder = tfds.builder_from_directory(str(shard_dir(tmp_path / "shards")))
  assert r["patches"] == sum(s.num_examples for s in builder.info.splits.values()) > 0
  assert r["matrix"] == 128 and r["slices"] > 0
  assert r["build_s"] > 0 and r["pipeline"] > 0 and r["consumed"] > 0
  rows = data_rows(r, config)
  assert len(rows) == 5 and rows[-1].endswith(f"= {r['pipeline'] / r['consumed']:.0f}× |")
