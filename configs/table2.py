"""The Table 2 grid: architectures × strategies × seeds, run by experiments.sweep.

  configs/table2.py        the paper's four networks (ResNet-50/101/152, ResNeXt-101)
  configs/table2.py:demo   two small networks, few epochs: minutes on the phantom

The text after ':' follows configs/common.py's grammar (a variant name; no options yet).
"""
import ml_collections

from configs.common import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = parse_arg(arg, ("paper", "demo")).variant
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
