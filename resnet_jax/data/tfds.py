"""TensorFlow Datasets: `data.name` (default cifar10) in the TFDS data
directory `data.dir` ('' is TFDS's default, ~/tensorflow_datasets).

Any image-classification dataset works: an Image feature and a ClassLabel
feature, taken from the dataset's supervised keys or named 'image' and
'label'. TFDS's 'validation' split is our 'val'; without one, 'val' is carved
from 'train' as for CIFAR-10.

What needs what:
- Reading a dataset prepared in TFDS's array_record format needs only
  `tensorflow-datasets` (a core dependency): records are read with
  random access and the images decoded with Pillow, as in the folder source.
- The first use of a dataset downloads and prepares it (in array_record, so
  later runs read it without TensorFlow). TFDS's builders encode images with
  TensorFlow, so preparing needs it too: `pip install -e '.[tfds-prepare]'`.
  Set `data.download=False` to refuse instead.
- A copy prepared elsewhere in TFDS's default tfrecord format needs
  TensorFlow to read (tf.data); re-preparing it in array_record does not.
"""
import functools
import importlib
import importlib.util
import os

import numpy as np

from resnet_jax.data import folder
from resnet_jax.errors import DataError, require

# Our split names -> TFDS's, in order of preference.
SPLIT_NAMES = {'train': ('train',), 'val': ('validation', 'val'),
               'test': ('test',)}
# TFDS retries a failed download 10 times with exponential backoff: minutes
# before an offline run fails. A few retries still ride out a blip.
DOWNLOAD_RETRIES = 3
OFFLINE_HINT = ('offline, use data.source=cifar10_binary (data.dir=.../'
                'cifar-10-batches-bin) or data.source=folder, or copy a '
                'prepared TFDS data directory into data.dir')


def splits(data_config) -> tuple[str, ...]:
  builder = _prepared_builder(data_config)
  return tuple(s for s in SPLIT_NAMES if _tfds_split(builder, s))


def class_names(data_config) -> tuple[str, ...]:
  builder = _prepared_builder(data_config)
  _, label_key = _keys(builder)
  return tuple(builder.info.features[label_key].names)


def load(data_config, split: str, num_classes: int):
  """Decodes a whole split into uint8 (N, S, S, 3) and int32 labels."""
  builder, where, tfds_split, image_key, label_key = _open(
      data_config, split, num_classes)
  size = data_config.image_size
  folder.check_memory_budget(f'{where} split {tfds_split}',
                             builder.info.splits[tfds_split].num_examples,
                             data_config)
  encoded, labels = _read_encoded(builder, tfds_split, image_key, label_key)
  images, ok = folder.decode_files(
      encoded, size, data_config.decode_threads, data_config.skip_corrupt,
      names=[f'{where} {tfds_split}[{i}]' for i in range(len(encoded))])
  labels = np.asarray(labels, np.int32)[ok]
  bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
  if bad.size:
    raise DataError(f'{where} {tfds_split}: example {bad[0]} has label '
                    f'{labels[bad[0]]}, outside 0..{num_classes - 1}')
  return images[ok], labels


def num_examples(data_config, split: str, num_classes: int) -> int:
  builder, _, tfds_split, _, _ = _open(data_config, split, num_classes)
  return builder.info.splits[tfds_split].num_examples


def data_source(data_config, split: str, num_classes: int):
  """A random-access source of the split's encoded examples, for streaming.

  Returns (source, image_key, label_key, name): source[i] is a dict with the
  undecoded image bytes; name prefixes an example's index in messages.
  """
  builder, where, tfds_split, image_key, label_key = _open(
      data_config, split, num_classes)
  decoders = {image_key: _import_tfds().decode.SkipDecoding()}
  try:
    source = builder.as_data_source(split=tfds_split, decoders=decoders)
  except NotImplementedError:
    raise DataError(
        f'{where} is prepared as {builder.info.file_format.value}, which '
        'cannot be read with random access: streaming needs array_record '
        '(move that folder away and rerun to prepare it again), or set '
        '--config.data.streaming=off') from None
  return source, image_key, label_key, f'{where} {tfds_split}'


def _open(data_config, split, num_classes):
  """(builder, where, tfds split, image key, label key), all checked."""
  builder = _prepared_builder(data_config)
  where = f'TFDS {builder.info.full_name} in {builder.data_dir}'
  tfds_split = _tfds_split(builder, split)
  if not tfds_split:
    raise DataError(f'split {split!r} asked for, but {where} has only '
                    f'{", ".join(builder.info.splits)}')
  image_key, label_key = _keys(builder)
  names = class_names(data_config)
  if len(names) != num_classes:
    raise DataError(f'{where} has {len(names)} classes but model.num_classes '
                    f'is {num_classes}: pass --config.model.num_classes='
                    f'{len(names)}')
  return builder, where, tfds_split, image_key, label_key


def _read_encoded(builder, split, image_key, label_key):
  """The split's encoded image bytes and labels, without decoding."""
  tfds = _import_tfds()
  decoders = {image_key: tfds.decode.SkipDecoding()}
  try:
    source = builder.as_data_source(split=split, decoders=decoders)
  except NotImplementedError:  # Not array_record: tf.data reads it.
    if importlib.util.find_spec('tensorflow') is None:
      raise DataError(
          f'TFDS {builder.info.full_name} in {builder.data_dir} is prepared as '
          f'{builder.info.file_format.value}, which needs TensorFlow to read: '
          "pip install -e '.[tfds-prepare]', or prepare it again in "
          'array_record (move that folder away and rerun)') from None
    dataset = builder.as_dataset(split=split, decoders=decoders)
    examples = list(tfds.as_numpy(dataset))
  else:
    examples = []
    for start in range(0, len(source), 4096):
      examples += source.__getitems__(
          range(start, min(start + 4096, len(source))))
  return ([e[image_key] for e in examples],
          [int(e[label_key]) for e in examples])


def _import_tfds():
  return require('tensorflow_datasets', 'tensorflow-datasets',
                 'data.source=tfds', ', or use data.source=cifar10_binary or '
                 'data.source=folder')


@functools.lru_cache(maxsize=8)
def _cached_builder(name: str, data_dir: str, download: bool):
  tfds = _import_tfds()
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except Exception as e:  # DatasetNotFoundError and friends.
    first = str(e).strip().splitlines()[0] if str(e).strip() else ''
    raise DataError(f'TFDS has no dataset {name!r} (nor a prepared copy in '
                    f'{data_dir or "its default data directory"}): '
                    f'{type(e).__name__}: {first}') from None
  if builder.is_prepared():
    return builder
  where = f'{builder.data_path}'
  if not download:
    raise DataError(f'TFDS {name} is not prepared in {where} and '
                    f'data.download=False; {OFFLINE_HINT}')
  try:  # A module global of TFDS's downloader (4.9.x); harmless if absent.
    downloader = importlib.import_module(
        'tensorflow_datasets.core.download.downloader')
    downloader.MAX_RETRIES = min(downloader.MAX_RETRIES, DOWNLOAD_RETRIES)
  except (ImportError, AttributeError, TypeError):
    pass
  try:
    builder.download_and_prepare(file_format='array_record')
  except Exception as e:
    raise DataError(_prepare_error(name, where, e)) from None
  return builder


def _prepare_error(name, where, error) -> str:
  chain, cause = [], error
  while cause is not None and len(chain) < 20:
    chain.append(cause)
    cause = cause.__cause__ or cause.__context__
  network = ('ConnectionError', 'NameResolutionError', 'MaxRetryError',
             'gaierror', 'TimeoutError', 'Timeout', 'ConnectTimeout',
             'DownloadError')
  if any(type(c).__name__ in network for c in chain):
    return (f'could not download {name} to prepare it in {where} (no network?): '
            f'{type(chain[-1]).__name__}; {OFFLINE_HINT}')
  if any(isinstance(c, ImportError) and 'tensorflow' in str(c) for c in chain):
    return (f'preparing TFDS {name} in {where} (its first use) needs '
            "TensorFlow: pip install -e '.[tfds-prepare]'; or use "
            'data.source=cifar10_binary or data.source=folder')
  first = str(error).strip().splitlines()[0] if str(error).strip() else ''
  return (f'could not prepare TFDS {name} in {where}: '
          f'{type(error).__name__}: {first[:300]}')


def _prepared_builder(data_config):
  data_dir = os.path.expanduser(data_config.dir) if data_config.dir else ''
  return _cached_builder(data_config.name, data_dir, bool(data_config.download))


def _tfds_split(builder, split):
  return next((s for s in SPLIT_NAMES[split] if s in builder.info.splits), None)


def _keys(builder):
  """(image feature, label feature) names, checked."""
  tfds = _import_tfds()
  features = builder.info.features
  keys = builder.info.supervised_keys
  if not (isinstance(keys, tuple) and len(keys) == 2
          and all(isinstance(k, str) and k in features for k in keys)):
    keys = ('image', 'label')
  image_key, label_key = keys
  image = features[image_key] if image_key in features else None
  label = features[label_key] if label_key in features else None
  if not (isinstance(image, tfds.features.Image)
          and isinstance(label, tfds.features.ClassLabel)):
    raise DataError(f'TFDS {builder.info.full_name} is not an image '
                    'classification dataset: it needs an Image and a '
                    f'ClassLabel feature (it has {", ".join(features)})')
  if np.dtype(image.np_dtype) != np.uint8:
    raise DataError(f'TFDS {builder.info.full_name}: {image_key} images are '
                    f'{np.dtype(image.np_dtype)}, not uint8')
  return keys
