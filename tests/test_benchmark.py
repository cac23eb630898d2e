"""The benchmark's roofline arithmetic."""


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
