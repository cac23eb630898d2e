"""The Table 2 grid: architectures × strategies × seeds, run by experiments.sweep.

  configs/table2.py        the paper's four networks (ResNet-50/101/152, ResNeXt-101)
  configs/table2.py:demo   two small networks, few epochs: minutes on the phantom
"""
import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "paper"
  if variant not in ("paper", "demo"):
    raise ValueError(f"unknown variant {variant!r} of configs/table2.py: paper, demo")
  c = ml_collections.ConfigDict()
  c.variant = variant
  c.classify_variant = variant
  c.archs = ("resnet-50", "resnet-101", "resnet-152", "resnext-101")
  c.strategies = ("raw", "weighted", "synthesis")
  c.seeds = (0,)
  c.processes = 1               # runs at a time
  c.data_dir = ""               # "": the phantom
  c.synthetic_dirs = ()         # required by strategy=synthesis
  c.init_from_dir = ""          # ported Kinetics checkpoints as INIT_FROM_DIR/<arch>
  c.overrides = ()              # extra "--config.x=y" flags for every run
  if variant == "demo":
    c.archs = ("tiny", "small")
  return c
