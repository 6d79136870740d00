"""ResNet-20 learns on the real CIFAR-10 training images (about a minute)."""
import os

import pytest

from conftest import REAL_DATA
from resnet_jax import config as config_lib
from resnet_jax import train


@pytest.mark.slow
def test_resnet20_learns_real_cifar10(tmp_path):
  if not os.path.isdir(REAL_DATA):
    message = f'real CIFAR-10 not found at {REAL_DATA}'
    if os.environ.get('RESNET_JAX_REQUIRE_DATA'):
      pytest.fail(message + ' (RESNET_JAX_REQUIRE_DATA is set)')
    pytest.skip(message)
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
