"""The order of the training examples: a fresh permutation each epoch.

Batch b of a run holds the examples at positions [i * B, (i + 1) * B) of
epoch e's permutation, (e, i) = divmod(b, steps per epoch), the epoch's
remainder dropped. The permutation depends only on (the member's order key,
e), so batch b depends only on (seed, b) and a resume needs no iterator
state. Both paths draw it here: the in-memory path once per epoch on the
devices (EpochOrders, with sample_batch inside the train step), the streamed
path on the host's CPU (stream.TrainBatches); jax.random gives the same bits
on every backend. Each member has its own keys (member_keys).
"""
import jax
import jax.numpy as jnp

from resnet_jax import config as config_lib


def split_seed(seed):
  """(order key, augmentation key): a run's two streams of randomness."""
  order_key, augment_key = jax.random.split(jax.random.key(seed))
  return order_key, augment_key


def epoch_order(order_key, epoch, num_examples: int):
  """Epoch `epoch`'s permutation of range(num_examples), int32."""
  return jax.random.permutation(jax.random.fold_in(order_key, epoch),
                                num_examples)


def batch_indices(order, step, batch_size: int):
  """Example numbers of batch `step`, `order` its epoch's permutation."""
  index = step % (order.shape[0] // batch_size)
  return jax.lax.dynamic_slice_in_dim(order, index * batch_size, batch_size)


def member_keys(config):
  """(order keys, augmentation keys), one per member, each drawn as a single
  run with the member's seed draws them."""
  seeds = jnp.asarray([m['seed'] for m in config_lib.members(config)],
                      jnp.uint32)
  return jax.vmap(split_seed)(seeds)


def sample_batch(train_data, order, step, batch_size: int):
  """Batch `step` of the training set, `order` its epoch's permutation."""
  indices = batch_indices(order, step, batch_size)
  return jax.tree.map(lambda x: x[indices], train_data)


class EpochOrders:
  """The in-memory train step's inputs, step after step from `start`: the
  training set on the devices and each member's permutation of the step's
  epoch, (members, examples).

  A permutation sorts the whole set twice: it is drawn once per epoch, by a
  jitted call the devices run before that epoch's first step, not in every
  step. `start` must be the train state's step (both advance by one a step).
  """

  def __init__(self, train_data, order_keys, batch_size: int, start: int,
               sharding):
    num_examples = train_data['label'].shape[0]
    self._data, self._keys = train_data, order_keys
    self._steps_per_epoch = num_examples // batch_size
    self._step, self._epoch, self._order = start, None, None
    self._draw = jax.jit(jax.vmap(
        lambda key, epoch: epoch_order(key, epoch, num_examples),
        in_axes=(0, None)), out_shardings=sharding)

  def __iter__(self):
    return self

  def __next__(self):
    epoch = self._step // self._steps_per_epoch
    if epoch != self._epoch:
      self._epoch, self._order = epoch, self._draw(self._keys, epoch)
    self._step += 1
    return {'data': self._data, 'order': self._order}
