"""ResNet-20 (1x1-conv shortcuts) in 30 epochs at batch 512, for a GPU:
config.gpu_recipe."""
from resnet_jax import config as config_lib


def get_config():
  return config_lib.gpu_recipe(config_lib.base_config())
