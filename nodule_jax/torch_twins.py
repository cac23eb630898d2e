"""PyTorch twins of the project's networks (torch is the optional extra `torch`): the
reference the Kinetics port is tested against, and the other side of
`experiments.benchmark --vs-torch`. Channels-first [B, C, D, H, W] as PyTorch runs them.

* Hara et al.'s 3D ResNet / ResNeXt with the published parameter names (3D-ResNets-PyTorch);
  `nodule_jax.port_kinetics` maps its state dict onto `models.resnet3d`.
* `Critic`, the twin of `models.critic.Critic`, with `critic_from_flax` to copy its weights.
* `Generator` (G1, G2 with contextual attention), built from `models.generator.Generator`'s
  parameters.
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


# ----------------------------------------------------------------- the generator
def depth_to_space(x: torch.Tensor) -> torch.Tensor:
  """[B, 8C, D, H, W] -> [B, C, 2D, 2H, 2W]; the inverse of `space_to_depth`."""
  b, c8, d, h, w = x.shape
  x = x.reshape(b, 2, 2, 2, c8 // 8, d, h, w)
  return x.permute(0, 4, 5, 1, 6, 2, 7, 3).reshape(b, c8 // 8, 2 * d, 2 * h, 2 * w)


def _patches(x: torch.Tensor, k: int, stride: int = 1, pad_before: int | None = None):
  """All k³ patches of x [C, D, H, W] at `stride`, zero-padded as `models.attention._patches`
  pads: [D', H', W', k, k, k, C]."""
  c, *n = x.shape
  pad_before = (k - 1) // 2 if pad_before is None else pad_before
  out = [-(-s // stride) for s in n]
  after = [max((o - 1) * stride + k - s - pad_before, 0) for o, s in zip(out, n)]
  x = F.pad(x, (pad_before, after[2], pad_before, after[1], pad_before, after[0]))
  p = x.unfold(1, k, stride).unfold(2, k, stride).unfold(3, k, stride)
  return p[:, :out[0], :out[1], :out[2]].permute(1, 2, 3, 4, 5, 6, 0)


def _fuse(scores: torch.Tensor, k: int) -> torch.Tensor:
  """`models.attention._fuse`: sums scores shifted along f and b together, per axis."""
  r = k // 2
  for axis in range(3):
    total = scores
    for s in range(1, r + 1):
      for sign in (1, -1):
        shifted = scores
        for ax in (axis, axis + 3):
          n = scores.shape[ax]
          shifted = torch.roll(shifted, -sign * s, dims=ax)
          keep = (torch.arange(n) + sign * s >= 0) & (torch.arange(n) + sign * s < n)
          shape = [1] * 6
          shape[ax] = n
          shifted = shifted * keep.reshape(shape).to(scores.dtype)
        total = total + shifted
    scores = total
  return scores


def _overlap_add(p: torch.Tensor, rate: int, shape) -> torch.Tensor:
  """`models.attention._overlap_add`: patches [n0, n1, n2, 2r, 2r, 2r, C] at stride r."""
  n, k, c = p.shape[:3], p.shape[3], p.shape[-1]
  out = p.new_zeros(*[(ni - 1) * rate + k for ni in n], c)
  for i in range(k // rate):
    for j in range(k // rate):
      for l in range(k // rate):
        block = p[:, :, :, i * rate:(i + 1) * rate, j * rate:(j + 1) * rate,
                  l * rate:(l + 1) * rate].permute(0, 3, 1, 4, 2, 5, 6).reshape(
                      n[0] * rate, n[1] * rate, n[2] * rate, c)
        out[i * rate:i * rate + n[0] * rate, j * rate:j * rate + n[1] * rate,
            l * rate:l * rate + n[2] * rate] += block
  s = rate // 2
  return out[s:s + shape[0], s:s + shape[1], s:s + shape[2]]


def contextual_attention(f, mask, rate: int = 2, ksize: int = 3, scale: float = 10.0):
  """`models.attention.contextual_attention(f, f, mask)` with its defaults (stride 1, fuse
  3): f [B, C, D, H, W], mask [B, 1, D, H, W] at f's resolution -> [B, C, D, H, W]."""
  outs = []
  for x, m in zip(f, mask):
    c, d, h, w = x.shape
    raw = _patches(x, 2 * rate, rate, rate // 2).reshape(-1, (2 * rate) ** 3 * c)
    xd = x[:, ::rate, ::rate, ::rate]
    md = F.max_pool3d(m[None], rate)[0]
    bp = _patches(xd, ksize)
    nb = bp.shape[:3]
    bp = bp.reshape(-1, ksize ** 3 * c)
    bp = bp / torch.clamp(bp.norm(dim=-1, keepdim=True), min=1e-4)
    valid = (_patches(md, ksize).reshape(-1, ksize ** 3).amax(-1) == 0).to(x.dtype)
    scores = _patches(xd, ksize).reshape(-1, ksize ** 3 * c) @ bp.T
    scores = _fuse(scores.reshape(*nb, *nb), 3).reshape(scores.shape) * valid
    attn = torch.softmax(scores * scale + (valid - 1) * 1e9, dim=-1) * valid
    pasted = (attn @ raw).reshape(*nb, 2 * rate, 2 * rate, 2 * rate, c)
    outs.append(_overlap_add(pasted, rate, (d, h, w)).permute(3, 0, 1, 2) / 8.0)
  return torch.stack(outs)


def _conv3(kernel, bias, dilation: int = 1) -> nn.Conv3d:
  """A 3³ 'same' conv holding a flax kernel [3, 3, 3, I, O] and bias [O]."""
  conv = nn.Conv3d(kernel.shape[3], kernel.shape[4], 3, padding=dilation, dilation=dilation)
  with torch.no_grad():
    conv.weight.copy_(torch.from_numpy(np.array(kernel, np.float32)).permute(4, 3, 0, 1, 2))
    conv.bias.copy_(torch.from_numpy(np.array(bias, np.float32)))
  return conv


class HourGlass(nn.Module):
  """The twin of `models.generator.HourGlass`, built from its flax parameters."""

  def __init__(self, params: dict, depth: int, dilations, attention: bool):
    super().__init__()
    self.depth, self.dilations, self.attention = depth, tuple(dilations), attention
    conv = lambda p, d=1: _conv3(p["kernel"], p["bias"], d)
    self.down = nn.ModuleList(conv(params[f"Down_{i}"]["Conv_0"]) for i in range(depth))
    names = iter(sorted((n for n in params if n.startswith("Conv_")),
                        key=lambda n: int(n.split("_")[1])))
    take = lambda d=1: conv(params[next(names)], d)   # flax numbers Conv_i as created
    self.after_down = nn.ModuleList(take() for _ in range(depth))
    self.dilated = nn.ModuleList(take(d) for d in self.dilations)
    if attention:  # a, then conv(c)(conv(c)(a)) creates the outer conv first, then the merge
      self.att_in, outer, inner = take(), take(), take()
      self.att_out = nn.ModuleList([inner, outer])
      self.merge = take()
    self.after_up = nn.ModuleList(take() for _ in range(depth - 1))
    self.up = nn.ModuleList(conv(params[f"Up_{i}"]["Conv_0"]) for i in range(depth))

  def forward(self, x, mask=None):
    h = x
    for down, conv in zip(self.down, self.after_down):
      h = F.elu(conv(F.elu(down(space_to_depth(h)))))
    branch = h
    for conv in self.dilated:
      branch = F.elu(conv(branch))
    if self.attention:
      a = F.elu(self.att_in(h))
      a = contextual_attention(a, F.max_pool3d(mask, 2 ** self.depth))
      for conv in self.att_out:
        a = F.elu(conv(a))
      branch = F.elu(self.merge(torch.cat([branch, a], 1)))
    h = branch
    for up, conv in zip(self.up[:-1], self.after_up):
      h = F.elu(conv(F.elu(depth_to_space(up(h)))))
    return torch.clamp(depth_to_space(self.up[-1](h)), -1.0, 1.0)


class Generator(nn.Module):
  """The twin of `models.generator.Generator`: (inputs [B, C, D, H, W], mask, masked
  [B, 1, D, H, W]) -> (x1, x2)."""

  def __init__(self, params: dict, depth: int, dilations, attention: bool = True):
    super().__init__()
    self.g1 = HourGlass(params["g1"], depth, dilations, False)
    self.g2 = HourGlass(params["g2"], depth, dilations, attention)

  def forward(self, inputs, mask, masked):
    x1 = self.g1(inputs)
    composite = x1 * mask + masked * (1 - mask)
    return x1, self.g2(torch.cat([composite, inputs[:, 1:]], 1), mask)
