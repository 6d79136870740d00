"""Input-pipeline throughput of each data source beside ResNet-20 training.

    python bench/input_pipeline.py [--folder_images=2000] [--train_steps=24]

Rows: host loads (images/s of read + decode + resize, paid once per run;
`epoch x` = load time over one training epoch at the measured rate);
streaming (stream.TrainBatches, grain with data.decode_threads threads,
paid every epoch: `epoch x` below 1 keeps the model fed; the `processes`
row runs the same reads in grain worker processes, to show why threads
were chosen); the on-device batch (order.sample_batch, crop, flip,
normalize, jitted alone); the ResNet-20 train step in memory and fed by the
streamed 256x256 JPEG folder. Nothing is downloaded: cifar10_binary is read
from --cifar_dir when it exists, the folders are generated in a temporary
directory, and tfds is prepared there from PNG bytes.
"""
import argparse
import functools
import io
import os
import sys
import tempfile
import time

import common
import grain
import jax
from absl import flags
import numpy as np
from PIL import Image

from resnet_jax import config as config_lib
from resnet_jax import data, models, train, train_state
from resnet_jax.data import augment, cifar10_binary, folder, order, stream, synthetic

DEFAULT_CIFAR = os.path.join(os.path.dirname(common.ROOT), 'shared', 'data',
                             'cifar10', 'cifar-10-batches-bin')


def timed(fn):
  """Wall time of one call (a host load), and its result."""
  start = time.perf_counter()
  out = fn()
  return time.perf_counter() - start, out


def rate_of(step, carry, steps, batch_size, repeats=1):
  """Images/s of `carry = step(carry)` (common.time_loop: the first call,
  compiling or starting threads, apart; the fastest window), the last carry."""
  _, seconds, carry = common.time_loop(step, carry, steps, repeats=repeats)
  return batch_size / min(seconds), carry


def write_folder(root, n, shape, ext, num_classes=10):
  rng = np.random.default_rng(0)
  for k in range(num_classes):
    os.makedirs(os.path.join(root, 'train', f'class_{k:02d}'))
  for i in range(n):
    pixels = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    # Smooth out half the noise so PNG/JPEG sizes are closer to photos'.
    pixels = ((pixels.astype(np.uint16) + pixels.mean((0, 1), keepdims=True)
               .astype(np.uint16)) // 2).astype(np.uint8)
    path = os.path.join(root, 'train', f'class_{i % num_classes:02d}',
                        f'{i:06d}.{ext}')
    Image.fromarray(pixels).save(path, quality=90) if ext == 'jpg' else \
        Image.fromarray(pixels).save(path)


def streaming_rate(config, steps, mesh):
  """Images/s of the streamed train batches, after the first one."""
  config.data.streaming = 'on'
  split = stream.open_split(config, 'train')
  batches = stream.TrainBatches(split, config, 0, mesh)
  try:
    return rate_of(lambda _: next(batches), None, steps,
                   config.train.batch_size)[0]
  finally:
    batches.close()


def _read_batch(split, batch_size, b):
  return stream._stack([split.example((b * batch_size + j) % len(split))  # pylint: disable=protected-access
                        for j in range(batch_size)])


def process_rate(config, steps, workers):
  """Images/s of the same reads in grain worker processes (mp_prefetch)."""
  flags.FLAGS.mark_as_parsed()  # grain's workers read its absl flags.
  split = stream.open_split(config, 'train')
  batch_size = config.train.batch_size
  dataset = (grain.MapDataset.range(steps + 2 * workers + 1)
             .map(functools.partial(_read_batch, split, batch_size))
             .to_iter_dataset(grain.ReadOptions(num_threads=1))
             .mp_prefetch(grain.MultiprocessingOptions(num_workers=workers)))
  iterator = iter(dataset)
  try:
    for _ in range(2 * workers):  # Workers start (spawn, import JAX).
      next(iterator)
    return rate_of(lambda _: next(iterator), None, steps, batch_size)[0]
  finally:
    iterator.close()


def tfds_rows(tmp, n, data_config):
  """Prepares an array_record TFDS dataset of n PNGs and times its load."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError:
    return [('tfds (array_record)', None, 'tensorflow-datasets not installed')]
  rng = np.random.default_rng(0)
  encoded = []
  for _ in range(n):
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
        buffer, format='PNG')
    encoded.append(buffer.getvalue())

  class BenchImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(32, 32, 3)),
          'label': tfds.features.ClassLabel(num_classes=10)}))

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples()}

    def _generate_examples(self):
      for i, image in enumerate(encoded):
        yield i, {'image': image, 'label': i % 10}

  BenchImages(data_dir=os.path.join(tmp, 'tfds'), file_format='array_record'
              ).download_and_prepare()
  from resnet_jax.data import tfds as tfds_source  # pylint: disable=import-outside-toplevel
  data_config.dir, data_config.name = os.path.join(tmp, 'tfds'), 'bench_images'
  seconds, (images, _) = timed(
      lambda: tfds_source.Reader(data_config, 'train', 10).read_all())
  return [('tfds (array_record, 32x32 PNG)', len(images) / seconds, f'{len(images)} images')]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--folder_images', type=int, default=2000)
  parser.add_argument('--synthetic_images', type=int, default=10000)
  parser.add_argument('--cifar_dir', default=DEFAULT_CIFAR)
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--train_steps', type=int, default=24)
  parser.add_argument('--pipeline_steps', type=int, default=50)
  parser.add_argument('--stream_steps', type=int, default=20)
  common.add_json(parser)
  args = parser.parse_args()

  config = config_lib.base_config()  # ResNet-20, 32x32 RGB, 10 classes.
  config.train.batch_size = args.batch_size
  data_config = config.data
  rows = []  # (what, images/s, note)

  def host_load(what, load):
    seconds, (images, _) = timed(lambda: load(data_config, 'train', 10))
    rows.append((what, len(images) / seconds, f'{len(images)} images'))

  data_config.synthetic_examples = args.synthetic_images
  host_load('synthetic', synthetic.load)
  if os.path.isdir(args.cifar_dir):
    data_config.dir = args.cifar_dir
    host_load('cifar10_binary', cifar10_binary.load)
  else:
    rows.append(('cifar10_binary', None, f'{args.cifar_dir} absent'))

  mesh = train.create_mesh()
  threads = f'{os.cpu_count()} threads, batch {args.batch_size}'
  with tempfile.TemporaryDirectory(prefix='input_pipeline_') as tmp:
    streamed = []
    for shape, ext, what in (((32, 32), 'png', '32x32 PNG'),
                             ((32, 32), 'jpg', '32x32 JPEG'),
                             ((256, 256), 'jpg', '256x256 JPEG -> 32')):
      root = os.path.join(tmp, f'{ext}{shape[0]}')
      write_folder(root, args.folder_images, shape, ext)
      data_config.source, data_config.dir = 'folder', root
      host_load(f'folder in memory, {what}', folder.load)
      streamed.append((f'folder streaming, {what}', streaming_rate(
          config, args.stream_steps, mesh), threads))
      data_config.streaming = 'auto'
    # The last folder, 256x256 JPEG, in grain's worker processes too.
    streamed.append((f'folder streaming, {what}, processes',
                     process_rate(config, args.stream_steps, os.cpu_count()),
                     f'{os.cpu_count()} grain worker processes'))
    if os.path.isdir(args.cifar_dir):
      data_config.source, data_config.dir = 'cifar10_binary', args.cifar_dir
      streamed.append(('cifar10_binary streaming (memmap)', streaming_rate(
          config, args.stream_steps, mesh), threads))
    rows += tfds_rows(tmp, args.folder_images, data_config) + streamed
    data_config.source, data_config.dir = 'folder', root  # 256x256 JPEG.
    rows += device_rows(config, args, mesh)

  env = common.environment()
  print(f'{common.header(env)}\nPillow {Image.__version__}, numpy '
        f'{np.__version__}\n')
  print(f'| {"what":50} | {"images/s":>9} | {"epoch x":>7} | note |')
  print(f'|{"-" * 52}|{"-" * 11}|{"-" * 9}|------|')
  train_rate = next(rate for what, rate, _ in rows
                    if what.startswith('ResNet-20 train step ('))
  table = common.Rows(args.json, command=' '.join(sys.argv), environment=env)
  for what, rate, note in rows:
    rate_text = f'{rate:9,.0f}' if rate else f'{"-":>9}'
    # Host loads run once: their cost in epochs of training at train_rate.
    # Streaming rows pay it every epoch: below 1 keeps the model fed.
    host = rate and not what.startswith(('on-device', 'ResNet'))
    epochs = train_rate / rate if host else None
    print(f'| {what:50} | {rate_text} | '
          f'{f"{epochs:7.3f}" if epochs else " " * 7} | {note} |')
    table.add({'what': what, 'images_per_sec': rate, 'epochs': epochs,
               'note': note})


def device_rows(config, args, mesh):
  """The on-device batch alone, the train step with it, and the train step
  fed by the streamed folder at config.data.dir."""
  data_config = config.data
  data_config.synthetic_examples = max(args.synthetic_images,
                                       4 * args.batch_size)
  images, labels = synthetic.load(data_config, 'train', 10)
  train_data = train.put_replicated({'image': images, 'label': labels}, mesh)
  normalization = data.channel_stats(images)
  order_key, augment_key = jax.random.split(jax.random.key(0))
  epoch_order = order.epoch_order(order_key, 0, len(labels))

  @jax.jit
  def pipeline(train_data, step):  # Sample, crop/flip, normalize: the step's.
    batch = order.sample_batch(train_data, epoch_order, step, args.batch_size)
    out = augment.random_crop_flip(jax.random.fold_in(augment_key, step),
                                   batch['image'])
    return step + 1, augment.normalize(out, *normalization), batch['label']

  batch = f'batch {args.batch_size}'
  rows = [('on-device batch (sample+crop+flip+normalize)', rate_of(
      lambda c: pipeline(train_data, c[0]), (0,), args.pipeline_steps,
      args.batch_size, repeats=2)[0], batch)]
  state = train_state.create_train_state(config, models.from_config(config),
                                         mesh)
  train_fn = train.make_train_fn(config, mesh, normalization)
  inputs = order.EpochOrders(train_data, order.member_keys(config)[0],
                             args.batch_size, 0, train.member_sharding(mesh))
  steps = f'{batch}, {args.train_steps} steps'
  rate, state = rate_of(lambda state: train_fn(state, next(inputs))[0],
                        state, args.train_steps, args.batch_size)
  rows.append(('ResNet-20 train step (incl. on-device batch)', rate, steps))
  # On a CPU-only machine decoding takes cores from the step: this row
  # shows it.
  data_config.streaming = 'on'
  batches = stream.TrainBatches(stream.open_split(config, 'train'), config, 0,
                                mesh)
  stream_fn = train.make_train_fn(config, mesh, normalization, streamed=True)
  try:
    rate, _ = rate_of(lambda state: stream_fn(state, next(batches))[0],
                      state, args.train_steps, args.batch_size)
    rows.append(('ResNet-20 train step, streamed 256px JPEG folder', rate,
                 steps))
  finally:
    batches.close()
  return rows


if __name__ == '__main__':
  main()
