"""PyTorch twins of the project's networks (torch is the optional extra `torch`): the
reference the Kinetics port is tested against, and the other side of
`experiments.benchmark --vs-torch`. Channels-first [B, C, D, H, W] as PyTorch runs them.

* Hara et al.'s 3D ResNet / ResNeXt with the published parameter names (3D-ResNets-PyTorch);
  `nodule_jax.port_kinetics` maps its state dict onto `models.resnet3d`.
* `Critic`, the twin of `models.critic.Critic`, with `critic_from_flax` to copy its weights.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


def _conv(i, o, k, s=1, g=1):
  return nn.Conv3d(i, o, kernel_size=k, stride=s, padding=k // 2, groups=g, bias=False)


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1, self.bn1 = _conv(inplanes, planes, 3, stride), nn.BatchNorm3d(planes)
    self.conv2, self.bn2 = _conv(planes, planes, 3), nn.BatchNorm3d(planes)
    self.downsample = downsample

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, downsample=None, mid=None, groups=1):
    super().__init__()
    mid = mid or planes
    self.conv1, self.bn1 = _conv(inplanes, mid, 1), nn.BatchNorm3d(mid)
    self.conv2, self.bn2 = _conv(mid, mid, 3, stride, groups), nn.BatchNorm3d(mid)
    self.conv3 = _conv(mid, planes * self.expansion, 1)
    self.bn3 = nn.BatchNorm3d(planes * self.expansion)
    self.downsample = downsample

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


class ResNeXtBottleneck(Bottleneck):
  expansion = 2

  def __init__(self, inplanes, planes, stride=1, downsample=None, cardinality=32):
    super().__init__(inplanes, planes, stride, downsample, cardinality * (planes // 32),
                     cardinality)


class ShortcutA(nn.Module):
  def __init__(self, planes, stride):
    super().__init__()
    self.planes, self.stride = planes, stride

  def forward(self, x):
    out = F.avg_pool3d(x, kernel_size=1, stride=self.stride)
    pad = torch.zeros(out.size(0), self.planes - out.size(1), *out.shape[2:])
    return torch.cat([out, pad], dim=1)


class ResNet(nn.Module):
  def __init__(self, block, layers, shortcut="B", widths=(64, 128, 256, 512), num_classes=400,
               in_channels=3):
    super().__init__()
    self.inplanes = 64
    self.conv1 = nn.Conv3d(in_channels, 64, kernel_size=7, stride=(1, 2, 2), padding=(3, 3, 3),
                           bias=False)
    self.bn1 = nn.BatchNorm3d(64)
    self.maxpool = nn.MaxPool3d(kernel_size=(3, 3, 3), stride=2, padding=1)
    for i, (w, n) in enumerate(zip(widths, layers)):
      setattr(self, f"layer{i + 1}", self._make_layer(block, w, n, shortcut, 1 if i == 0 else 2))
    self.avgpool = nn.AdaptiveAvgPool3d(1)
    self.fc = nn.Linear(widths[-1] * block.expansion, num_classes)

  def _make_layer(self, block, planes, blocks, shortcut, stride):
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      if shortcut == "A":
        downsample = ShortcutA(planes * block.expansion, stride)
      else:
        downsample = nn.Sequential(
            nn.Conv3d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride,
                      bias=False), nn.BatchNorm3d(planes * block.expansion))
    layers = [block(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes * block.expansion
    layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x):
    x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(torch.flatten(self.avgpool(x), 1))


def build(arch, num_classes=400, in_channels=3):
  specs = {
      "resnet-18": (BasicBlock, (2, 2, 2, 2), "A", (64, 128, 256, 512)),
      "resnet-50": (Bottleneck, (3, 4, 6, 3), "B", (64, 128, 256, 512)),
      "resnext-101": (ResNeXtBottleneck, (3, 4, 23, 3), "B", (128, 256, 512, 1024)),
  }
  block, layers, shortcut, widths = specs[arch]
  return ResNet(block, layers, shortcut, widths, num_classes, in_channels)


def randomise(model, seed=0):
  """Random weights and random BatchNorm statistics (so eval mode is a real check)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in model.state_dict().items():
      if name.endswith("num_batches_tracked"):
        continue
      if name.endswith("running_var"):
        t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
      elif name.endswith(("running_mean", "bias")):
        t.copy_(torch.randn(t.shape, generator=g) * 0.1)
      elif name.endswith("weight") and t.ndim == 1:  # BN scale
        t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
      else:
        fan_in = t[0].numel()
        t.copy_(torch.randn(t.shape, generator=g) * (0.5 / fan_in) ** 0.5)
  return model.eval()


# ----------------------------------------------------------------- the GAN's critic
def space_to_depth(x: torch.Tensor) -> torch.Tensor:
  """[B, C, D, H, W] -> [B, 8C, D/2, H/2, W/2], channels ordered (dz, dy, dx, c) as
  `models.layers.space_to_depth` orders them channels-last."""
  b, c, d, h, w = x.shape
  x = x.reshape(b, c, d // 2, 2, h // 2, 2, w // 2, 2)
  return x.permute(0, 3, 5, 7, 1, 2, 4, 6).reshape(b, 8 * c, d // 2, h // 2, w // 2)


class Critic(nn.Module):
  """(x [B, 1, D, H, W], label [B]) -> (wgan [B], aux logits [B, 3]); see models.critic."""

  def __init__(self, in_shape, widths, in_channels: int = 1):
    super().__init__()
    self.convs, self.norms = nn.ModuleList(), nn.ParameterList()
    c, shape = in_channels, tuple(in_shape)
    for i, w in enumerate(widths):
      self.convs.append(nn.Conv3d(8 * c, w, kernel_size=2))
      shape = tuple(n // 2 for n in shape)
      if i > 0:  # LayerNorm over (C, D, H, W), scale and bias per channel (flax's default)
        self.norms.append(nn.Parameter(torch.ones(w)))
        self.norms.append(nn.Parameter(torch.zeros(w)))
      c = w
    self.embedding = nn.Embedding(2, c)
    self.wgan = nn.Linear(c * int(np.prod(shape)), 1)
    self.aux = nn.Linear(c * int(np.prod(shape)), 3)

  def forward(self, x, label):
    h = x
    for i, conv in enumerate(self.convs):
      h = conv(F.pad(space_to_depth(h), (0, 1, 0, 1, 0, 1)))  # XLA's SAME for k=2
      if i > 0:
        scale, bias = self.norms[2 * (i - 1)], self.norms[2 * (i - 1) + 1]
        mean = h.mean(dim=(1, 2, 3, 4), keepdim=True)
        var = h.var(dim=(1, 2, 3, 4), unbiased=False, keepdim=True)
        h = (h - mean) / torch.sqrt(var + 1e-6) * scale[:, None, None, None] \
            + bias[:, None, None, None]
      h = F.leaky_relu(h, 0.2)
    pooled = h.mean(dim=(2, 3, 4))
    projection = (self.embedding(label) * pooled).sum(-1)
    flat = h.permute(0, 2, 3, 4, 1).flatten(1)   # channels-last order, as the flax Dense
    return self.wgan(flat)[:, 0] + projection, self.aux(flat)


def critic_from_flax(params: dict, in_shape, widths) -> Critic:
  """The twin of a `models.critic.Critic` with its parameters `params` (a flax dict)."""
  critic = Critic(in_shape, widths)
  t = lambda a: torch.from_numpy(np.array(a, np.float32))
  with torch.no_grad():
    for i, conv in enumerate(critic.convs):
      conv.weight.copy_(t(params[f"Conv_{i}"]["kernel"]).permute(4, 3, 0, 1, 2))
      conv.bias.copy_(t(params[f"Conv_{i}"]["bias"]))
      if i > 0:
        critic.norms[2 * (i - 1)].copy_(t(params[f"LayerNorm_{i - 1}"]["scale"]))
        critic.norms[2 * (i - 1) + 1].copy_(t(params[f"LayerNorm_{i - 1}"]["bias"]))
    critic.embedding.weight.copy_(t(params["class_embedding"]["embedding"]))
    for linear, name in ((critic.wgan, "Dense_0"), (critic.aux, "Dense_1")):
      linear.weight.copy_(t(params[name]["kernel"]).T)
      linear.bias.copy_(t(params[name]["bias"]))
  return critic
