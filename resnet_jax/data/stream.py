"""Streams splits too large for memory from disk, with grain.

A split that fits `data.max_in_memory_gb` goes whole to device memory and
each train step samples its batch there (order.sample_batch). A larger one is
read here, batch by batch, through the same source Reader and the same
validation carve as the in-memory path (data/__init__.py): reader.read(i)
gives example i of the stored split (folder: a file, decoded with
folder.decode; tfds: the array_record data source; cifar10_binary:
memory-mapped records; synthetic: its arrays), and grain runs it in
background threads that prefetch whole batches ahead of the train step.

Why grain: it is Google's maintained loader for JAX, needs no TensorFlow,
and its MapDataset keeps random access through map and batch, so batch b can
be built from b alone. Why threads, not grain's worker processes
(mp_prefetch): Pillow releases the GIL while decoding and resizing, so
threads already use every core. On the 2-core machine of docs/data.md,
processes were about 10% faster on 256x256 JPEG and no faster on 32x32,
while they start by re-importing JAX (spawn), need absl flags parsed, copy
the readers into every worker (a memmap would be copied whole) and compete
for the same cores as the train step on a CPU-only machine.

Batch order: data/order.py's, the permutation drawn by the same function
from the same key on the host's CPU, so a streamed run trains on the very
batches of an in-memory run, and batch b depends only on (seed, b): resume
starts the loader at the restored step, with no iterator state in the
checkpoint.

With several processes each reads only its slice of the global batch and
the global array is assembled with jax.make_array_from_process_local_data.
"""
import os
import threading

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from resnet_jax import config as config_lib
from resnet_jax import data
from resnet_jax.data import folder
from resnet_jax.data import order as order_lib
from resnet_jax.errors import DataError, require


def _grain():
  return require('grain', 'grain', 'data.streaming (reading a split from disk)')


# Normalization statistics of a streamed train split come from this many
# training images (all of them if fewer), a fixed seeded sample.
STATS_SAMPLE = 10_000
STATS_SEED = 0
# Batches decoded ahead of the train step.
PREFETCH_BATCHES = 4


def should_stream(config) -> bool:
  """Whether training streams: data.streaming, or (auto) a split too large."""
  return any(should_stream_split(config, name)
             for name in data.training_splits(config.data))


def should_stream_split(config, name: str) -> bool:
  """Whether split `name` alone (evaluation, samples) is read from disk."""
  mode = config.data.streaming
  if mode != 'auto':
    return mode == 'on'
  if not hasattr(data.source_module(config.data), 'Reader'):
    return False  # It can only load in memory.
  return not folder.fits_in_memory(split_size(config, name), config.data)


def split_size(config, name: str) -> int:
  """The example count of split `name`, without decoding any example.

  A reader's length reads no example (TFDS: its metadata), so a dataset that
  cannot be streamed (TFDS prepared as tfrecord) still loads in memory under
  'auto'.
  """
  return len(_open(config, name)[1])


def open_split(config, name: str) -> 'StreamedSplit':
  """Split `name` for streaming; 'val' carved from 'train' as load_splits does."""
  reader, positions = _open(config, name)
  split = StreamedSplit(reader, positions, config.data,
                        config.model.num_classes)
  data.check_not_empty(len(split), name)
  data.check_shape(split.example(0)[0].shape, name, config.data)
  return split


def _open(config, name: str):
  """(reader of the stored split, positions of `name` in it)."""
  data_config = config.data
  stored, part = data.locate(data_config, name)
  module = data.source_module(data_config)
  if not hasattr(module, 'Reader'):
    raise DataError(f'data.source={data_config.source} has no streaming '
                    'reader (no Reader in its module); set '
                    'data.streaming=off or auto')
  reader = module.Reader(data_config, stored, config.model.num_classes)
  return reader, data.positions(len(reader), part, data_config)


class StreamedSplit:
  """Examples of a split, read on demand: `example(k)` for k < len."""

  def __init__(self, reader, positions, data_config, num_classes: int):
    self.reader = reader
    self.positions = positions  # Indices into the stored split.
    self.num_classes = num_classes
    self.grayscale = data_config.grayscale
    self.skip_corrupt = data_config.skip_corrupt
    self.threads = data_config.decode_threads or os.cpu_count() or 1
    self._warned = set()

  def __len__(self):
    return len(self.positions)

  def example(self, k: int):
    """(uint8 HWC image, int32 label) of example k.

    An unreadable image is a one-line DataError naming it; with
    data.skip_corrupt the next readable example of the split takes its place
    (deterministically, so resume stays exact) after a warning.
    """
    for attempt in range(len(self)):
      index = int(self.positions[(k + attempt) % len(self)])
      image, label, error = self.reader.read(index)
      if error is None:
        data.check_labels([label], self.num_classes,
                          lambda _, i=index: self.reader.name(i))
        return data.to_channels(image, self.grayscale), label
      name = self.reader.name(index)
      if not self.skip_corrupt:
        raise folder.unreadable(name, error)
      if name not in self._warned:
        self._warned.add(name)
        folder.warn_skipped(name, error)
    raise DataError('no readable image in the split')

  def batches(self, ks, batch_size: int):
    """Yields {'image', 'label'} numpy batches of the examples `ks`, in order,
    decoded by grain's prefetching threads; the last may be short."""
    ks = np.asarray(ks)
    dataset = (_grain().MapDataset.range(len(ks))
               .map(lambda j: self.example(int(ks[j])))
               .batch(batch_size, batch_fn=_stack))
    yield from dataset.to_iter_dataset(self.read_options())

  def load(self, ks=None) -> data.Split:
    """Examples `ks` (default: all) decoded into memory, in order."""
    ks = np.arange(len(self)) if ks is None else ks
    parts = list(self.batches(ks, 256))
    return data.Split(np.concatenate([p['image'] for p in parts]),
                      np.concatenate([p['label'] for p in parts]))

  def read_options(self):
    """grain's threads: one per decode thread, a few batches ahead."""
    return _grain().ReadOptions(num_threads=self.threads,
                             prefetch_buffer_size=max(PREFETCH_BATCHES,
                                                      self.threads))


def channel_stats(split: StreamedSplit):
  """Per-channel mean and std of up to STATS_SAMPLE seeded training images.

  All of them when the split is that small, in order: then the statistics
  are those of the in-memory path, bit for bit.
  """
  ks = np.arange(len(split))
  if len(split) > STATS_SAMPLE:
    ks = np.sort(np.random.default_rng(STATS_SEED).choice(
        len(split), STATS_SAMPLE, replace=False))
  return data.channel_stats(split.load(ks).images)


class _EpochOrder:
  """Epoch e's permutation of n examples (order.epoch_order), on the host."""

  def __init__(self, seed: int, n: int):
    self.seed, self.n = seed, n
    self._cache, self._lock = {}, threading.Lock()

  def __call__(self, epoch: int) -> np.ndarray:
    with self._lock:
      if epoch not in self._cache:
        try:
          device = jax.local_devices(backend='cpu')[0]  # This process's own.
        except RuntimeError:  # No CPU backend: the default device is as exact.
          device = None
        with jax.default_device(device):
          order_key, _ = order_lib.split_seed(self.seed)
          order = order_lib.epoch_order(order_key, epoch, self.n)
        self._cache = {e: o for e, o in self._cache.items() if e >= epoch - 1}
        self._cache[epoch] = np.asarray(order)
      return self._cache[epoch]


def batch_examples(order, step: int, steps_per_epoch: int, batch_size: int):
  """Example numbers of global batch `step`."""
  epoch, i = divmod(step, steps_per_epoch)
  return order(epoch)[i * batch_size:(i + 1) * batch_size]


class TrainBatches:
  """Iterator of global train batches from `start_step` on, on the mesh.

  `next()` gives the batches of the next step, one per member (each in its
  seed's order), as a dict of (members, batch, ...) arrays sharded along
  'data'; grain's threads decode the following ones meanwhile.
  """

  def __init__(self, split: StreamedSplit, config, start_step: int, mesh):
    batch_size = config.train.batch_size
    steps_per_epoch = len(split) // batch_size
    processes, process = jax.process_count(), jax.process_index()
    local = batch_size // processes
    orders = [_EpochOrder(m['seed'], len(split))
              for m in config_lib.members(config)]

    def local_batch(step):
      batches = []
      for order in orders:
        ks = batch_examples(order, step, steps_per_epoch, batch_size)
        batches.append(_stack([split.example(int(k)) for k in
                               ks[process * local:(process + 1) * local]]))
      return {k: np.stack([b[k] for b in batches]) for k in batches[0]}

    dataset = _grain().MapDataset.range(start_step, config.train.steps).map(
        local_batch)
    self._iterator = iter(dataset.to_iter_dataset(split.read_options()))
    self._sharding = NamedSharding(mesh, P(None, 'data'))
    self._shapes = {'image': (len(orders), batch_size,
                              *split.example(0)[0].shape),
                    'label': (len(orders), batch_size)}

  def __iter__(self):
    return self

  def __next__(self):
    batch = next(self._iterator)
    return {k: jax.make_array_from_process_local_data(
        self._sharding, v, self._shapes[k]) for k, v in batch.items()}

  def close(self):
    close = getattr(self._iterator, 'close', None)
    if close:
      close()


def _stack(examples):
  return {'image': np.stack([e[0] for e in examples]),
          'label': np.asarray([e[1] for e in examples], np.int32)}
