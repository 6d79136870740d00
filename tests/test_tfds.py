"""data.source=tfds on tiny datasets prepared here, offline; never downloads.

Needs tensorflow-datasets (a core dependency) but not TensorFlow.
"""
import io
import socket
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_config
from resnet_jax import data, evaluate, train
from resnet_jax.data import tfds as tfds_source
from resnet_jax.errors import DataError, UserError

CLASSES = ('cat', 'dog', 'emu')


def tfds_config(data_dir, **overrides):
  return tiny_config(**{'data.source': 'tfds', 'data.dir': str(data_dir),
                        'data.name': 'tiny_shapes', 'model.num_classes': 3,
                        **overrides})


def png(pixels) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format='PNG')
  return buffer.getvalue()


def class_image(label, rng, shape):
  colour = np.random.default_rng(1000 + label).integers(0, 256, 3)
  return ((colour + rng.integers(0, 256, (*shape, 3))) // 2).astype(np.uint8)


def prepare(data_dir, counts, odd_sizes=False):
  """Writes a prepared array_record TFDS dataset 'tiny_shapes' to data_dir.

  Images are given as PNG bytes, so preparing needs no TensorFlow either.
  Returns {split: (images as stored, labels)}.
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  stored = {}

  def examples(split, n):
    rng = np.random.default_rng(len(split))
    images, labels = [], []
    for i in range(n):
      shape = ((16, 16), (23, 11), (40, 32))[i % 3] if odd_sizes else (16, 16)
      images.append(class_image(i % 3, rng, shape))
      labels.append(i % 3)
    stored[split] = (images, np.array(labels))
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {'image': png(image), 'label': label}

  class TinyShapes(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, supervised_keys=('image', 'label'),
          features=tfds.features.FeaturesDict({
              'image': tfds.features.Image(shape=(None, None, 3)),
              'label': tfds.features.ClassLabel(names=CLASSES)}))

    def _split_generators(self, dl_manager):
      return {split: self._generate_examples(split, n)
              for split, n in counts.items()}

    def _generate_examples(self, split, n):
      return examples(split, n)

  TinyShapes(data_dir=str(data_dir), file_format='array_record'
             ).download_and_prepare()
  return stored


def test_missing_package_is_a_clear_error(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)
  with pytest.raises(UserError, match=r"data.source=tfds needs the package "
                     r"tensorflow-datasets .*: pip install tensorflow-datasets, "
                     'or use data.source=cifar10_binary or data.source=folder'):
    data.load_splits(tfds_config(tmp_path), ('train',))


def test_reads_prepared_array_record_without_tensorflow(tmp_path):
  had_tensorflow = 'tensorflow' in sys.modules
  stored = prepare(tmp_path, {'train': 12, 'validation': 5, 'test': 4},
                   odd_sizes=True)
  config = tfds_config(tmp_path)
  splits = data.load_splits(config, ('train', 'val', 'test'))
  assert data.class_names(config) == CLASSES
  # TFDS's 'validation' is our 'val', not carved from train.
  assert [len(splits[s]) for s in ('train', 'val', 'test')] == [12, 5, 4]
  for split, name in (('val', 'validation'), ('test', 'test')):
    # TFDS shuffles when preparing: compare (image, label) pairs as sets.
    # 16x16 images come back as stored, the others resized as by the folder
    # source (antialiased bilinear).
    expected = sorted((np.asarray(Image.fromarray(image).resize(
        (16, 16), Image.Resampling.BILINEAR)).tobytes(), int(label))
                      for image, label in zip(*stored[name]))
    got = sorted((image.tobytes(), int(label)) for image, label in
                 zip(splits[split].images, splits[split].labels))
    assert got == expected
  if not had_tensorflow:
    assert 'tensorflow' not in sys.modules
  gray = data.load_splits(tfds_config(tmp_path, **{'data.grayscale': True}),
                          ('test',))['test']
  assert gray.images.shape == (4, 16, 16, 1)
  with pytest.raises(DataError, match=r'has 3 classes but model.num_classes is '
                     r'10: pass --config.model.num_classes=3'):
    data.load_splits(tfds_config(tmp_path, **{'model.num_classes': 10}),
                     ('train',))


def test_trains_and_evaluates_on_a_tfds_dataset(tmp_path):
  prepare(tmp_path / 'tfds', {'train': 60, 'test': 9})
  config = tfds_config(tmp_path / 'tfds', **{
      'train.steps': 30, 'train.eval_every': 30, 'train.log_every': 10,
      'data.val_fraction': 0.2})
  result = train.train_and_evaluate(config, str(tmp_path / 'w'))
  assert result['val_accuracy'] >= 0.6  # Carved: 12 of 60; chance is 1/3.
  report = evaluate.evaluate(config, str(tmp_path / 'w'), 'latest', 'test')
  assert report['num_examples'] == 9 and report['step'] == 30


@pytest.fixture
def offline(monkeypatch):
  """No name resolves and no socket connects: nothing can be downloaded."""
  def refuse(*args, **kwargs):
    raise socket.gaierror(socket.EAI_NONAME, 'Name or service not known')
  monkeypatch.setattr(socket, 'getaddrinfo', refuse)
  monkeypatch.setattr(socket, 'create_connection', refuse)
  monkeypatch.setattr(socket.socket, 'connect', refuse)


def test_offline_download_names_the_alternatives(tmp_path, offline):
  config = tfds_config(tmp_path, **{'data.name': 'cifar10',
                                    'model.num_classes': 10})
  start = time.perf_counter()
  with pytest.raises(DataError) as error:
    data.load_splits(config, ('train',))
  message = str(error.value)
  assert message.startswith('could not download cifar10') and '\n' not in message
  assert 'data.source=cifar10_binary' in message
  assert 'data.source=folder' in message
  assert time.perf_counter() - start < 30  # Not TFDS's minutes of retries.
  config.data.download = False
  with pytest.raises(DataError, match=r'cifar10 is not prepared in .* and '
                     r'data.download=False; offline, use data.source='
                     'cifar10_binary'):
    data.load_splits(config, ('train',))


def test_unknown_dataset_is_a_clear_error(tmp_path, offline):
  with pytest.raises(DataError, match=r"TFDS has no dataset 'no_such_set'"):
    data.load_splits(tfds_config(tmp_path, **{'data.name': 'no_such_set'}),
                     ('train',))


def test_prepare_errors_are_told_apart():
  def chained(outer, inner):
    try:
      try:
        raise inner
      except Exception as e:
        raise outer from e
    except Exception as e:
      return e
  network = chained(RuntimeError('download failed'),
                    socket.gaierror(-2, 'Name or service not known'))
  assert 'no network?' in tfds_source._prepare_error('cifar10', '/d', network)
  no_tf = ModuleNotFoundError("No module named 'tensorflow'")
  assert 'needs TensorFlow' in tfds_source._prepare_error('cifar10', '/d', no_tf)
  other = tfds_source._prepare_error('x', '/d', ValueError('bad\nthings'))
  assert other == 'could not prepare TFDS x in /d: ValueError: bad'
