"""Configs: variants, option strings, and unknown keys on the command line."""
import os
import re
import subprocess
import sys

import pytest

from configs import classify, synthesis, table2


def test_variants_and_options():
  assert classify.get_config().arch == "resnet-50"
  c = classify.get_config("demo,arch=resnet101,strategy=weighted")
  assert (c.variant, c.arch, c.strategy) == ("demo", "resnet-101", "weighted")
  assert synthesis.get_config("smoke").num_steps < synthesis.get_config("demo").num_steps
  assert table2.get_config().archs == ("resnet-50", "resnet-101", "resnet-152", "resnext-101")
  for bad in ("fast", "arch=resnet-50,lr=1"):
    with pytest.raises(ValueError):
      classify.get_config(bad)
  with pytest.raises(ValueError):
    synthesis.get_config("huge")


def test_unknown_config_key_is_an_error(tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.train", "--config", "configs/synthesis.py:smoke",
       "--workdir", str(tmp_path), "--config.optim.learning_rate=1e-3"],
      capture_output=True, text=True, cwd=root, timeout=300)
  assert proc.returncode != 0
  assert "unknown config key --config.optim.learning_rate" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not list(tmp_path.iterdir())  # nothing was started


@pytest.mark.parametrize("override, message", [
    ("--config.num_steps=abc", "invalid literal for int"),
    ("--config.data.flip=maybe", "Non-boolean argument"),
    ("--config.model.dilations=x", r"--config.model.dilations=\('x',\): expected a tuple of int"),
    ("--config.data.crop_pad=(1,2.5,2)", "expected a tuple of int like"),
])
def test_a_config_value_of_the_wrong_type_is_one_line(override, message, tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.train", "--config", "configs/synthesis.py:smoke",
       "--workdir", str(tmp_path), override], capture_output=True, text=True, cwd=root,
      timeout=300)
  assert proc.returncode != 0 and re.search(message, proc.stderr), proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr and not list(tmp_path.iterdir())
