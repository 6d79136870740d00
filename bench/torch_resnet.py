"""PyTorch twin of resnet_jax.models.ResNet, for benchmarks only.

Same layers in the same order: 3x3/16 stem + BN + ReLU, three stages of n
basic blocks (16, 32, 64 channels; stride 2 entering stages 2 and 3), 1x1
strided conv + BN ('conv') or subsample + zero-pad ('zeropad') shortcuts, or
none (the plain CNN), global average pooling, a dense classifier. Never
imported by the resnet_jax package.
"""
import torch.nn.functional as F
from torch import nn


def conv(cin, cout, k, stride):
  return nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=False)


class BasicBlock(nn.Module):

  def __init__(self, cin, cout, stride, shortcut):
    super().__init__()
    self.conv1, self.bn1 = conv(cin, cout, 3, stride), nn.BatchNorm2d(cout)
    self.conv2, self.bn2 = conv(cout, cout, 3, 1), nn.BatchNorm2d(cout)
    self.shortcut, self.stride, self.extra = shortcut, stride, cout - cin
    self.proj = None
    if shortcut == 'conv' and (stride != 1 or cin != cout):
      self.proj = nn.Sequential(conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    if self.shortcut is None:
      return F.relu(y)
    r = x
    if self.proj is not None:
      r = self.proj(x)
    elif self.stride != 1 or self.extra:  # Option A, as in models.py.
      r = x[:, :, ::self.stride, ::self.stride]
      r = F.pad(r, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
    return F.relu(y + r)


class ResNet(nn.Module):

  def __init__(self, num_layers, num_classes=10, shortcut='conv'):
    super().__init__()
    self.stem = nn.Sequential(conv(3, 16, 3, 1), nn.BatchNorm2d(16), nn.ReLU())
    blocks, cin = [], 16
    for stage, cout in enumerate((16, 32, 64)):
      for block in range(num_layers):
        stride = 2 if stage > 0 and block == 0 else 1
        blocks.append(BasicBlock(cin, cout, stride, shortcut))
        cin = cout
    self.blocks = nn.Sequential(*blocks)
    self.fc = nn.Linear(64, num_classes)

  def forward(self, x):
    x = self.blocks(self.stem(x))
    return self.fc(x.mean(dim=(2, 3)))
