"""CIFAR ResNets (He et al. 2015, section 4.2), the plain CNN baseline, Wide
ResNets (Zagoruyko & Komodakis 2016) and the 18-layer pre-activation ResNet
of common CIFAR reference code (kuangliu/pytorch-cifar's PreActResNet18).

ResNet and plain CNN: depth 6n+2, a 3x3/16 stem, three stages of n basic
blocks (widths 16, 32, 64; stages 2 and 3 downsample by stride 2), global
average pooling and a dense classifier. model.num_layers is n, the blocks per
stage, for every model here (WRN: depth 6n+4; PreAct: 8n+2). Nothing here
knows about training.
"""
import functools
from typing import Any, Callable, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from resnet_jax import cpu_conv

SHORTCUTS = ('conv', 'zeropad')
STAGE_WIDTHS = (16, 32, 64)

# He et al. 2015: Kaiming-normal (fan-in) for every convolution.
kaiming_normal = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


def layer_factories(dtype, conv_general_dilated, train: bool):
  """(conv, norm): every model's convolution (no bias, Kaiming-normal, 3x3
  padding 1 unless told) and BatchNorm."""
  conv = functools.partial(
      nn.Conv, padding=1, use_bias=False, dtype=dtype,
      kernel_init=kaiming_normal, conv_general_dilated=conv_general_dilated)
  # PyTorch's BN defaults (momentum 0.1 there is 0.9 here); statistics in
  # float32 whatever the computation dtype.
  norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                           momentum=0.9, epsilon=1e-5, dtype=jnp.float32)
  return conv, norm


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
    conv, norm = layer_factories(self.dtype, self.conv_general_dilated, train)
    x = x.astype(self.dtype)
    x = nn.relu(norm()(conv(STAGE_WIDTHS[0], (3, 3), 1)(x)))
    for stage, features in enumerate(STAGE_WIDTHS):
      for block in range(self.num_layers):
        strides = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(features, strides, self.shortcut, conv, norm)(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return x.astype(jnp.float32)


class PreActBlock(nn.Module):
  """He et al. 2016's pre-activation block: BN-ReLU-conv3x3, BN-ReLU-
  (dropout)-conv3x3, plus the input; where the shape changes, plus a 1x1
  convolution of the activated input instead (as WRN's and kuangliu's code)."""
  features: int
  strides: int
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]
  dropout: float = 0.0
  train: bool = False

  @nn.compact
  def __call__(self, x):
    y = nn.relu(self.norm()(x))
    residual = x
    if self.strides != 1 or x.shape[-1] != self.features:
      residual = self.conv(self.features, (1, 1), self.strides, padding=0)(y)
    y = self.conv(self.features, (3, 3), self.strides)(y)
    y = nn.relu(self.norm()(y))
    # Rate 0 draws nothing: no 'dropout' key needed.
    y = nn.Dropout(self.dropout, deterministic=not self.train)(y)
    y = self.conv(self.features, (3, 3), 1)(y)
    return y + residual


class PreActResNet(nn.Module):
  """A 3x3 stem convolution of `stem_width`, stages of `num_layers`
  pre-activation blocks of `stage_widths` (every stage after the first opens
  with stride 2), global average pooling and a dense classifier. Two
  families (builders below):

  - WRN-(6n+4)-k (Zagoruyko & Komodakis 2016): a stem of 16, widths 16k,
    32k, 64k, dropout between each block's convolutions, BN-ReLU after the
    last block. WRN-28-10: n=4, k=10.
  - kuangliu/pytorch-cifar's PreActResNet: a stem of 64, widths 64, 128,
    256, 512 and, as there, no BN-ReLU after the last block. n=2: the
    18-layer one.
  """
  num_layers: int  # n, the blocks per stage.
  stem_width: int
  stage_widths: Sequence[int]
  final_activation: bool  # BN-ReLU before the pooling.
  dropout: float = 0.0
  num_classes: int = 10
  dtype: Any = jnp.float32
  conv_general_dilated: Optional[Callable] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv, norm = layer_factories(self.dtype, self.conv_general_dilated, train)
    x = conv(self.stem_width, (3, 3), 1)(x.astype(self.dtype))
    for stage, features in enumerate(self.stage_widths):
      for block in range(self.num_layers):
        strides = 2 if stage > 0 and block == 0 else 1
        x = PreActBlock(features, strides, conv, norm, self.dropout,
                        train)(x)
    if self.final_activation:
      x = nn.relu(norm()(x))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


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


def wide_resnet(model_config, **kwargs) -> nn.Module:
  """WRN-(6n+4)-k: n = model.num_layers, k = model.width_factor."""
  return PreActResNet(
      num_layers=model_config.num_layers, stem_width=STAGE_WIDTHS[0],
      stage_widths=tuple(w * model_config.width_factor for w in STAGE_WIDTHS),
      final_activation=True, dropout=model_config.dropout,
      num_classes=model_config.num_classes, **kwargs)


def preact_resnet(model_config, **kwargs) -> nn.Module:
  return PreActResNet(num_layers=model_config.num_layers, stem_width=64,
                      stage_widths=(64, 128, 256, 512), final_activation=False,
                      num_classes=model_config.num_classes, **kwargs)


# The registry: model.name -> builder(model_config, dtype=...,
# conv_general_dilated=...). config.py's choices of model.name come from it.
MODELS = {'resnet': resnet, 'cnn': plain_cnn, 'wrn': wide_resnet,
          'preact_resnet': preact_resnet}


class Description(NamedTuple):
  """How reports, listings and comparisons name a model."""
  kind: str  # 'ResNet', 'plain', 'WRN', 'PreAct': compare's --group=name.
  family: str  # 'ResNet (conv)', 'WRN (k=10)', ...: --group=family.
  depth: Optional[int]  # Layers with weights, as its paper counts them.
  title: str  # 'ResNet-20 (conv shortcuts)', 'WRN-28-10', ...


def _resnet(m) -> Description:
  depth = 6 * m.num_layers + 2
  return Description('ResNet', f'ResNet ({m.shortcut})', depth,
                     f'ResNet-{depth} ({m.shortcut} shortcuts)')


def _plain(m) -> Description:
  depth = 6 * m.num_layers + 2
  return Description('plain', 'plain', depth, f'plain CNN, {depth} layers')


def _wrn(m) -> Description:
  depth = 6 * m.num_layers + 4
  dropout = f', dropout {m.dropout:g}' if m.dropout else ''
  return Description('WRN', f'WRN (k={m.width_factor})', depth,
                     f'WRN-{depth}-{m.width_factor}{dropout}')


def _preact(m) -> Description:
  depth = 8 * m.num_layers + 2
  return Description('PreAct', 'PreAct ResNet', depth, f'PreAct ResNet-{depth}')


# model.name -> its Description from the model config; a model registered
# without one is described by its model.name alone.
DESCRIPTIONS = {'resnet': _resnet, 'cnn': _plain, 'wrn': _wrn,
                'preact_resnet': _preact}


def describe(model_config) -> Description:
  """The model's names for people (DESCRIPTIONS)."""
  named = DESCRIPTIONS.get(model_config.name)
  if named is None:
    return Description(model_config.name, model_config.name, None,
                       model_config.name)
  return named(model_config)


def from_config(config) -> nn.Module:
  """The model of a run's config: architecture, compute dtype and the
  convolution implementation (model.conv_impl)."""
  return create_model(
      config.model, dtype=jnp.dtype(config.train.dtype),
      conv_general_dilated=cpu_conv.select_conv(config.model.conv_impl))
