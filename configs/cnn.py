"""The plain 20-layer CNN: the ResNet-20 layout without shortcuts."""
from resnet_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.model.name = 'cnn'
  return config
