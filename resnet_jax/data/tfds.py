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


class Reader:
  """A split's encoded examples, decoded on demand (the source's Reader).

  read(i) needs random access, so a dataset prepared as array_record;
  read_all reads any prepared format.
  """

  def __init__(self, data_config, split: str, num_classes: int):
    (self.builder, self.dataset, self.split, self.image_key,
     self.label_key) = _open(data_config, split, num_classes)
    self.data_config = data_config

  def __len__(self):  # From the metadata: opens no data file.
    return self.builder.info.splits[self.split].num_examples

  def read(self, i):
    example = self._source[i]
    image, error = folder.try_decode(example[self.image_key],
                                     self.data_config.image_size)
    return image, int(example[self.label_key]), error

  def name(self, i):
    return f'{self.dataset} {self.split}[{i}]'

  def read_all(self):
    """Every readable example: encoded bytes read in bulk, then decoded in a
    thread pool."""
    config = self.data_config
    folder.check_memory_budget(f'{self.dataset} split {self.split}', len(self),
                               config)
    encoded, labels = self._read_encoded()
    images, ok = folder.decode_files(
        encoded, config.image_size, config.decode_threads, config.skip_corrupt,
        names=[self.name(i) for i in range(len(encoded))])
    return images[ok], np.asarray(labels, np.int32)[ok]

  @functools.cached_property
  def _source(self):
    source = self._random_access()
    if source is None:
      raise DataError(
          f'{self.dataset} is prepared as '
          f'{self.builder.info.file_format.value}, which cannot be read with '
          'random access: streaming needs array_record (move that folder away '
          'and rerun to prepare it again), or set '
          '--config.data.streaming=off')
    return source

  def _random_access(self):
    """The split's array_record data source, or None in another format."""
    decoders = {self.image_key: _import_tfds().decode.SkipDecoding()}
    try:
      return self.builder.as_data_source(split=self.split, decoders=decoders)
    except NotImplementedError:
      return None

  def _read_encoded(self):
    """The split's encoded image bytes and labels, without decoding."""
    source = self._random_access()
    if source is None:  # Not array_record: tf.data reads it.
      examples = self._read_with_tensorflow()
    else:
      examples = []
      for start in range(0, len(source), 4096):
        examples += source.__getitems__(
            range(start, min(start + 4096, len(source))))
    return ([e[self.image_key] for e in examples],
            [int(e[self.label_key]) for e in examples])

  def _read_with_tensorflow(self):
    if importlib.util.find_spec('tensorflow') is None:
      raise DataError(
          f'{self.dataset} is prepared as '
          f'{self.builder.info.file_format.value}, which needs TensorFlow to '
          "read: pip install -e '.[tfds-prepare]', or prepare it again in "
          'array_record (move that folder away and rerun)')
    tfds = _import_tfds()
    decoders = {self.image_key: tfds.decode.SkipDecoding()}
    return list(tfds.as_numpy(self.builder.as_dataset(split=self.split,
                                                      decoders=decoders)))


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
