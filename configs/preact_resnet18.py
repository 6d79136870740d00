"""The 18-layer pre-activation ResNet of kuangliu/pytorch-cifar
(PreActResNet18, 11.2M parameters on CIFAR-10) with the 30-epoch recipe of
configs/resnet_conv_fast.py (config.fast_recipe)."""
from resnet_jax import config as config_lib


def get_config():
  config = config_lib.fast_recipe(config_lib.base_config())
  config.model.name = 'preact_resnet'
  config.model.num_layers = 2  # Blocks per stage: depth 8n+2 = 18.
  return config
