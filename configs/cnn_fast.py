"""The plain 20-layer CNN in 30 epochs: config.fast_recipe."""
from resnet_jax import config as config_lib


def get_config():
  c = config_lib.fast_recipe(config_lib.base_config())
  c.model.name = 'cnn'
  return c
