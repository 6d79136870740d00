"""WRN-28-10 (Zagoruyko & Komodakis 2016, 36.5M parameters) with the
30-epoch recipe of configs/resnet_conv_fast.py (config.fast_recipe). The
paper trains 200 epochs, some rows with dropout 0.3 (model.dropout). Too
heavy for a CPU: a GPU's model."""
from resnet_jax import config as config_lib


def get_config():
  config = config_lib.fast_recipe(config_lib.base_config())
  config.model.name = 'wrn'
  config.model.num_layers = 4  # Depth 6n+4 = 28.
  config.model.width_factor = 10
  return config
