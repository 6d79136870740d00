"""The train state: each member's parameters, BatchNorm statistics, optimizer
state and, with train.ema_decay, the weights' moving average.

The members' states are stacked on a leading member axis (train.py vmaps its
step over it). `update_ema` is the average's update, which train.train_step
applies after each step.
"""
from typing import Any

import jax
import jax.numpy as jnp
from flax.training import train_state as flax_train_state

from resnet_jax import config as config_lib
from resnet_jax import optim
from resnet_jax.mesh import member_sharding


class TrainState(flax_train_state.TrainState):
  batch_stats: Any


class AveragedTrainState(TrainState):
  """A TrainState with an exponential moving average of the weights
  (train.ema_decay > 0): ema = {'params', 'batch_stats'}. Its own class, so
  a run without averaging keeps today's state and checkpoints exactly."""
  ema: Any


def ema_decay(ema_decay_max, step):
  """The averaging decay at the train state's `step` (the steps before this
  one, a skipped non-finite one included): the warm-up
  min(ema_decay, (1 + step) / (10 + step)) of TensorFlow's
  ExponentialMovingAverage(num_updates), so that early on the average
  follows the weights instead of sitting at their initialization."""
  return jnp.minimum(ema_decay_max, (1.0 + step) / (10.0 + step))


def update_ema(ema, params, batch_stats, decay):
  """ema <- decay * ema + (1 - decay) * (params, batch_stats)."""
  return jax.tree.map(lambda e, x: decay * e + (1.0 - decay) * x, ema,
                      {'params': params, 'batch_stats': batch_stats})


def create_train_state(config, model, mesh) -> TrainState:
  """Each member's parameters and optimizer state, initialized from its seed
  and stacked on a leading member axis, replicated on the mesh."""
  channels = 1 if config.data.grayscale else 3
  shape = (1, config.data.image_size, config.data.image_size, channels)

  def init(seed, learning_rate, weight_decay):
    variables = model.init(jax.random.key(seed), jnp.zeros(shape), train=False)
    # The average starts at the initialization (its warm-up soon leaves it).
    averaged = ({'ema': {'params': variables['params'],
                         'batch_stats': variables['batch_stats']}}
                if config.train.ema_decay else {})
    state = (AveragedTrainState if averaged else TrainState).create(
        apply_fn=model.apply, params=variables['params'],
        batch_stats=variables['batch_stats'],
        tx=optim.create_optimizer(config.train), **averaged)
    return state.replace(opt_state=optim.with_hyperparams(
        state.opt_state, learning_rate, weight_decay))

  members = config_lib.members(config)
  column = lambda key, dtype: jnp.asarray([m[key] for m in members], dtype)
  # At -O0 XLA:CPU compiles the initializers (threefry random bits) ~10x
  # faster, for a program that runs once; a few parameters differ from
  # -O2's by one float32 ulp.
  options = ({'xla_backend_optimization_level': 0}
             if jax.default_backend() == 'cpu' else None)
  return jax.jit(jax.vmap(init), out_shardings=member_sharding(mesh),
                 compiler_options=options)(
      column('seed', jnp.uint32), column('learning_rate', jnp.float32),
      column('weight_decay', jnp.float32))
