"""ResNet-20 (1x1-conv shortcuts) in 20 epochs with weight averaging and
translation test-time augmentation: config.twenty_epoch_recipe."""
from resnet_jax import config as config_lib


def get_config():
  return config_lib.twenty_epoch_recipe(config_lib.base_config())
