"""WRN-16-8 (Zagoruyko & Komodakis 2016, 11.0M parameters) with the 30-epoch
recipe of configs/resnet_conv_fast.py (config.fast_recipe)."""
from resnet_jax import config as config_lib


def get_config():
  config = config_lib.fast_recipe(config_lib.base_config())
  config.model.name = 'wrn'
  config.model.num_layers = 2  # Depth 6n+4 = 16.
  config.model.width_factor = 8
  return config
