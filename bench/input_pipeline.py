"""Input-pipeline throughput of each data source beside ResNet-20 training
(the rows and `epoch x`: docs/data.md#input-pipeline-speed). Nothing is
downloaded: cifar10_binary is read from --cifar_dir when it exists, the
folders are generated in a temporary directory, and tfds is prepared there
from PNG bytes.
"""
import argparse
import io
import os
import tempfile
import time

import common
import jax
import numpy as np
from PIL import Image

from gpu_throughput import step_rate
from resnet_jax import config as config_lib
from resnet_jax import data, train
from resnet_jax.data import augment, cifar10_binary, folder, order, stream, synthetic

DEFAULT_CIFAR = os.path.join(os.path.dirname(common.ROOT), 'shared', 'data',
                             'cifar10', 'cifar-10-batches-bin')


def rate_of(step, carry, steps, batch_size, repeats=1):
  """Images/s of `carry = step(carry)` (common.time_loop: the first call,
  compiling or starting threads, apart; the fastest window)."""
  _, seconds, _ = common.time_loop(step, carry, steps, repeats=repeats)
  return batch_size / min(seconds)


def load_rate(load, data_config):
  """(images/s, note) of a host load of the training split."""
  start = time.perf_counter()
  images, _ = load(data_config, 'train', 10)
  return len(images) / (time.perf_counter() - start), f'{len(images)} images'


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


def streaming_rate(config, steps):
  """Images/s of the streamed train batches, after the first one."""
  config.data.streaming = 'on'
  batches = stream.TrainBatches(stream.open_split(config, 'train'), config, 0,
                                train.create_mesh())
  try:
    return rate_of(lambda _: next(batches), None, steps,
                   config.train.batch_size)
  finally:
    batches.close()
    config.data.streaming = 'auto'


def batch_rate(config, steps):
  """Images/s of the step's on-device batch alone: sample from the
  epoch's order, crop and flip, normalize."""
  images, labels = synthetic.load(config.data, 'train', 10)
  train_data = train.put_replicated({'image': images, 'label': labels},
                                    train.create_mesh())
  normalization = data.channel_stats(images)
  order_key, augment_key = jax.random.split(jax.random.key(0))
  epoch_order = order.epoch_order(order_key, 0, len(labels))
  batch_size = config.train.batch_size

  @jax.jit
  def pipeline(train_data, step):
    batch = order.sample_batch(train_data, epoch_order, step, batch_size)
    out = augment.random_crop_flip(jax.random.fold_in(augment_key, step),
                                   batch['image'])
    return step + 1, augment.normalize(out, *normalization), batch['label']

  return rate_of(lambda c: pipeline(train_data, c[0]), (0,), steps,
                 batch_size, repeats=2)


def tfds_rate(tmp, n, data_config):
  """Prepares an array_record TFDS dataset of n PNGs and times its load."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None, 'tensorflow-datasets not installed'
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
      return tfds.core.DatasetInfo(
          builder=self, features=tfds.features.FeaturesDict({
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
  return load_rate(lambda *a: tfds_source.Reader(*a).read_all(), data_config)


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
  dc = config.data
  dc.source = 'synthetic'
  dc.synthetic_examples = max(args.synthetic_images, 4 * args.batch_size)
  print(f'# Pillow {Image.__version__}, numpy {np.__version__}')
  rows = common.start_table(args, 'what', 'images/s', 'epoch x', 'note')
  train_rate = step_rate(config, args.train_steps, 0)[0]

  def add(what, rate, note, per_epoch=True):
    # Host loads run once: their cost in epochs of training at train_rate.
    # Streaming rows pay it every epoch: below 1 keeps the model fed.
    epochs = train_rate / rate if per_epoch and rate else None
    print(common.table(what, f'{rate:,.0f}' if rate else '-',
                       f'{epochs:.3f}' if epochs else '', note), flush=True)
    rows.add({'what': what, 'images_per_sec': rate, 'epochs': epochs,
              'note': note})

  steps = f'batch {args.batch_size}, {args.train_steps} steps'
  add('ResNet-20 train step (incl. on-device batch)', train_rate, steps, False)
  add('on-device batch (sample+crop+flip+normalize)',
      batch_rate(config, args.pipeline_steps), f'batch {args.batch_size}',
      False)
  add('synthetic', *load_rate(synthetic.load, dc))
  threads = f'{os.cpu_count()} threads, batch {args.batch_size}'
  if os.path.isdir(args.cifar_dir):
    dc.source, dc.dir = 'cifar10_binary', args.cifar_dir
    add('cifar10_binary', *load_rate(cifar10_binary.load, dc))
    add('cifar10_binary streaming (memmap)',
        streaming_rate(config, args.stream_steps), threads)
  else:
    add('cifar10_binary', None, f'{args.cifar_dir} absent')
  with tempfile.TemporaryDirectory(prefix='input_pipeline_') as tmp:
    for shape, ext, what in (((32, 32), 'png', '32x32 PNG'),
                             ((32, 32), 'jpg', '32x32 JPEG'),
                             ((256, 256), 'jpg', '256x256 JPEG -> 32')):
      root = os.path.join(tmp, f'{ext}{shape[0]}')
      write_folder(root, args.folder_images, shape, ext)
      dc.source, dc.dir = 'folder', root
      add(f'folder in memory, {what}', *load_rate(folder.load, dc))
      add(f'folder streaming, {what}',
          streaming_rate(config, args.stream_steps), threads)
    # On a CPU-only machine decoding takes cores from the step: this row
    # shows it.
    dc.streaming = 'on'  # The last folder, 256x256 JPEG.
    add('ResNet-20 train step, streamed 256px JPEG folder',
        step_rate(config, args.train_steps, 0)[0], steps, False)
    add('tfds (array_record, 32x32 PNG)',
        *tfds_rate(tmp, args.folder_images, dc))


if __name__ == '__main__':
  main()
