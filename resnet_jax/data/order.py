"""The order of the training examples: a fresh permutation each epoch.

Batch b of a run holds the examples at positions [i * B, (i + 1) * B) of
epoch e's permutation, (e, i) = divmod(b, steps per epoch), the epoch's
remainder dropped. The permutation depends only on (the member's order key,
e), so batch b depends only on (seed, b) and a resume needs no iterator
state. Both paths draw it here: the in-memory path once per epoch on the
devices (train.EpochOrders), the streamed path on the host's CPU
(stream.TrainBatches); jax.random gives the same bits on every backend.
"""
import jax


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
