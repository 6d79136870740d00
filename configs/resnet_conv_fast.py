"""ResNet-20 (1x1-conv shortcuts) in 30 epochs: config.fast_recipe."""
from resnet_jax import config as config_lib


def get_config():
  return config_lib.fast_recipe(config_lib.base_config())
