"""ResNet-20 with parameter-free zero-padding shortcuts (option A)."""
from resnet_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.model.shortcut = 'zeropad'
  return config
