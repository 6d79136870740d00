"""ResNet-20 (zero-padding shortcuts) in 30 epochs: config.fast_recipe."""
from resnet_jax import config as config_lib


def get_config():
  c = config_lib.fast_recipe(config_lib.base_config())
  c.model.shortcut = 'zeropad'
  return c
