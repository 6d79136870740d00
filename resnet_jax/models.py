"""CIFAR ResNets (He et al. 2015, section 4.2) and the plain CNN baseline.

Depth is 6n+2: a 3x3/16 stem, three stages of n basic blocks (widths 16, 32,
64; stages 2 and 3 downsample by stride 2), global average pooling and a
dense classifier. Nothing here knows about training.
"""
import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax.numpy as jnp

from resnet_jax import cpu_conv

SHORTCUTS = ('conv', 'zeropad')
STAGE_WIDTHS = (16, 32, 64)

# He et al. 2015: Kaiming-normal (fan-in) for every convolution.
kaiming_normal = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


class BasicBlock(nn.Module):
  """Two 3x3 conv-BN layers; `shortcut=None` gives the plain (no skip) block."""
  features: int
  strides: int
  shortcut: Optional[str]
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x):
    y = self.conv(self.features, (3, 3), self.strides)(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.features, (3, 3), 1)(y)
    y = self.norm()(y)
    if self.shortcut is None:
      return nn.relu(y)
    residual = x
    if x.shape != y.shape:
      if self.shortcut == 'conv':  # Option B: 1x1 strided projection + BN.
        residual = self.conv(self.features, (1, 1), self.strides, padding=0)(x)
        residual = self.norm()(residual)
      else:  # Option A: subsample, then zero-pad channels; no parameters.
        residual = x[:, ::self.strides, ::self.strides, :]
        extra = self.features - x.shape[-1]
        residual = jnp.pad(residual, ((0, 0), (0, 0), (0, 0),
                                      (extra // 2, extra - extra // 2)))
    return nn.relu(y + residual)


class ResNet(nn.Module):
  """CIFAR ResNet-(6n+2); `shortcut=None` is the plain CNN of the same depth."""
  num_layers: int  # n, the number of blocks per stage.
  num_classes: int = 10
  shortcut: Optional[str] = 'conv'
  dtype: Any = jnp.float32  # Computation dtype; parameters stay float32.
  conv_general_dilated: Optional[Callable] = None  # None: lax's convolution.

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(
        nn.Conv, padding=1, use_bias=False, dtype=self.dtype,
        kernel_init=kaiming_normal,
        conv_general_dilated=self.conv_general_dilated)
    # PyTorch's BN defaults (momentum 0.1 there is 0.9 here); statistics in
    # float32 whatever the computation dtype.
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=0.9, epsilon=1e-5, dtype=jnp.float32)
    x = x.astype(self.dtype)
    x = nn.relu(norm()(conv(STAGE_WIDTHS[0], (3, 3), 1)(x)))
    for stage, features in enumerate(STAGE_WIDTHS):
      for block in range(self.num_layers):
        strides = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(features, strides, self.shortcut, conv, norm)(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return x.astype(jnp.float32)


def create_model(model_config, dtype=jnp.float32,
                 conv_general_dilated=None) -> nn.Module:
  """Builds the model named by `model_config` (a `config.model` ConfigDict)."""
  if model_config.name not in MODELS:
    raise ValueError(f'unknown model.name {model_config.name!r}; '
                     f'choose one of {", ".join(MODELS)}')
  return MODELS[model_config.name](model_config, dtype=dtype,
                                   conv_general_dilated=conv_general_dilated)


def resnet(model_config, **kwargs) -> nn.Module:
  if model_config.shortcut not in SHORTCUTS:
    raise ValueError(f'unknown model.shortcut {model_config.shortcut!r}; '
                     f'choose one of {", ".join(SHORTCUTS)}')
  return ResNet(num_layers=model_config.num_layers,
                num_classes=model_config.num_classes,
                shortcut=model_config.shortcut, **kwargs)


def plain_cnn(model_config, **kwargs) -> nn.Module:
  return ResNet(num_layers=model_config.num_layers,
                num_classes=model_config.num_classes, shortcut=None, **kwargs)


# The registry: model.name -> builder(model_config, dtype=...,
# conv_general_dilated=...). config.py's choices of model.name come from it.
MODELS = {'resnet': resnet, 'cnn': plain_cnn}


def from_config(config) -> nn.Module:
  """The model of a run's config: architecture, compute dtype and the
  convolution implementation (model.conv_impl)."""
  return create_model(
      config.model, dtype=jnp.dtype(config.train.dtype),
      conv_general_dilated=cpu_conv.select_conv(config.model.conv_impl))
