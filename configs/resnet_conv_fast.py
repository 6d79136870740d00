"""ResNet-20 (1x1-conv shortcuts) in 30 epochs: the shipped recipe (Nesterov,
linear warmup, cosine decay, label smoothing, no decay on BN/biases), shortened
to 10,500 steps of 128 (~30 epochs of 45,000), with flip test-time
augmentation at evaluation."""
from resnet_jax import config as config_lib


def get_config():
  c = config_lib.base_config()
  c.train.steps = 10_500
  c.train.warmup_steps = 500
  c.train.eval_every = 1_050  # ~3 epochs.
  c.train.eval_flip = True
  return c
