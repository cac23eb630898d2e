"""Porting 3D-ResNets-PyTorch checkpoints: logits equal PyTorch's in eval mode."""
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the port needs the optional torch extra")

from nodule_jax import torch_twins  # noqa: E402
from nodule_jax.port_kinetics import PortError, load_kinetics  # noqa: E402


def _save(tmp_path, arch, release=2018, num_classes=400, seed=0):
  model = torch_twins.randomise(torch_twins.build(arch, num_classes), seed)
  state = model.state_dict()
  if release == 2018:  # DataParallel prefix, as published
    payload = {"epoch": 200, "arch": arch, "state_dict": {f"module.{k}": v for k, v in state.items()},
               "optimizer": {}}
  else:
    payload = {"epoch": 200, "arch": arch, "state_dict": dict(state), "optimizer": {},
               "scheduler": {}}
  path = tmp_path / f"{arch}_{release}.pth"
  torch.save(payload, path)
  return model, path


def _torch_logits(model, x):
  with torch.no_grad():
    return model(torch.from_numpy(x.transpose(0, 4, 1, 2, 3))).numpy()


@pytest.mark.parametrize("arch, release", [
    ("resnet-18", 2018), ("resnet-50", 2020),
    pytest.param("resnext-101", 2018, marks=pytest.mark.slow)])
def test_logits_equal_pytorch_in_eval_mode(tmp_path, arch, release):
  model, path = _save(tmp_path, arch, release)
  flax_model, variables = load_kinetics(str(path), arch, num_classes=400, in_channels=3)
  x = np.random.default_rng(1).normal(size=(2, 16, 32, 32, 3)).astype(np.float32)
  ours = np.asarray(flax_model.apply(variables, jnp.asarray(x), train=False))
  np.testing.assert_allclose(ours, _torch_logits(model, x), atol=1e-4, rtol=1e-4)


def test_one_ct_channel_sums_rgb_and_the_head_is_replaced(tmp_path):
  model, path = _save(tmp_path, "resnet-18")
  x1 = np.random.default_rng(2).normal(size=(1, 16, 32, 32, 1)).astype(np.float32)
  m400, v400 = load_kinetics(str(path), "resnet-18", num_classes=400, in_channels=1)
  ours = np.asarray(m400.apply(v400, jnp.asarray(x1)))
  np.testing.assert_allclose(ours, _torch_logits(model, np.repeat(x1, 3, -1)), atol=1e-4,
                             rtol=1e-4)
  m2, v2 = load_kinetics(str(path), "resnet-18", num_classes=2, in_channels=1)
  assert v2["params"]["fc"]["kernel"].shape == (512, 2)
  np.testing.assert_array_equal(v2["params"]["layer4_1"]["conv2"]["kernel"],
                                v400["params"]["layer4_1"]["conv2"]["kernel"])


def test_bad_checkpoints_are_errors_naming_the_key(tmp_path):
  model, path = _save(tmp_path, "resnet-18")
  payload = torch.load(path, weights_only=True)
  sd = payload["state_dict"]
  del sd["module.layer3.1.bn2.running_var"]
  torch.save(payload, tmp_path / "missing.pth")
  with pytest.raises(PortError, match="missing key.*layer3_1/bn2/var"):
    load_kinetics(str(tmp_path / "missing.pth"), "resnet-18")
  payload = torch.load(path, weights_only=True)
  payload["state_dict"]["module.layer2.0.conv1.weight"] = torch.zeros(128, 64, 3, 3, 1)
  torch.save(payload, tmp_path / "shape.pth")
  with pytest.raises(PortError, match="shape mismatch for 'layer2.0.conv1.weight'"):
    load_kinetics(str(tmp_path / "shape.pth"), "resnet-18")
  payload = torch.load(path, weights_only=True)
  payload["state_dict"]["module.layer5.0.conv1.weight"] = torch.zeros(1, 1, 1, 1, 1)
  torch.save(payload, tmp_path / "extra.pth")
  with pytest.raises(PortError, match="unexpected key 'layer5.0.conv1.weight'"):
    load_kinetics(str(tmp_path / "extra.pth"), "resnet-18")
  with pytest.raises(PortError, match="holds 'resnet-18', not 'resnet-50'"):
    load_kinetics(str(path), "resnet-50")


class _Evil:
  def __reduce__(self):
    return (print, ("this would run arbitrary code",))


def test_a_file_that_needs_pickle_code_is_refused(tmp_path):
  torch.save({"arch": "resnet-18", "state_dict": {}, "extra": _Evil()}, tmp_path / "evil.pth")
  with pytest.raises(PortError, match="refused"):
    load_kinetics(str(tmp_path / "evil.pth"), "resnet-18")
