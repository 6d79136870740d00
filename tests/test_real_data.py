"""ResNet-20 learns on the real CIFAR-10 training images (about a minute)."""
import pytest

from conftest import REAL_DATA, require_real_data
from resnet_jax import config as config_lib
from resnet_jax import train


@pytest.mark.slow
def test_resnet20_learns_real_cifar10(tmp_path):
  require_real_data()
  config = config_lib.base_config()
  config.data.source = 'cifar10_binary'
  config.data.dir = REAL_DATA
  # A fifth of an epoch: 150 steps of 64 images, warmup then cosine decay.
  config.train.batch_size = 64
  config.train.steps = 150
  config.train.warmup_steps = 15
  config.train.label_smoothing = 0.0
  config.train.eval_every = 150
  config.train.eval_batch_size = 500
  result = train.train_and_evaluate(config, str(tmp_path))
  print(f'real-data check: {result}')
  assert result['step'] == 150
  assert result['val_accuracy'] >= 0.35  # Chance is 0.10.
