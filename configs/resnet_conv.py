"""ResNet-20 with 1x1 conv + BN projection shortcuts (option B)."""
from resnet_jax import config as config_lib


def get_config():
  return config_lib.base_config()
