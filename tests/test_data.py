import numpy as np
import pytest
import jax

from conftest import tiny_config, write_cifar_bin, random_cifar
from resnet_jax import data
from resnet_jax.data import augment, cifar10_binary, stream, synthetic
from resnet_jax.errors import DataError


def cifar_config(folder, **overrides):
  return tiny_config(**{'data.source': 'cifar10_binary', 'data.dir': str(folder),
                        'data.image_size': 32, 'data.val_fraction': 0.25,
                        **overrides})


def test_reader_round_trips_odd_record_counts(cifar_dir):
  folder, arrays = cifar_dir
  images, labels = cifar10_binary.read_file(str(folder / 'data_batch_1.bin'))
  np.testing.assert_array_equal(images, arrays['data_batch_1.bin'][0])
  np.testing.assert_array_equal(labels, arrays['data_batch_1.bin'][1])
  # All train files, in numeric order, 7 + 5 + 1 records.
  splits = data.load_splits(cifar_config(folder, **{'data.val_fraction': 0.3}),
                            ('train', 'val', 'test'))
  assert (len(splits['train']), len(splits['val']), len(splits['test'])) == (9, 4, 3)
  everything = np.concatenate(
      [arrays[f'data_batch_{i}.bin'][1] for i in (1, 2, 3)])
  assert sorted(np.concatenate([splits['train'].labels, splits['val'].labels])) == sorted(everything)
  np.testing.assert_array_equal(splits['test'].images, arrays['test_batch.bin'][0])
  assert data.class_names(cifar_config(folder))[3] == 'name3'


def test_batch_files_are_read_in_numeric_order(tmp_path):
  for i in (2, 10, 1):
    write_cifar_bin(tmp_path / f'data_batch_{i}.bin', *random_cifar(1, seed=i))
  images, _ = cifar10_binary.load(cifar_config(tmp_path).data, 'train', 10)
  expected = [random_cifar(1, seed=i)[0][0] for i in (1, 2, 10)]
  np.testing.assert_array_equal(images, np.stack(expected))


def test_validation_split_is_fixed_and_disjoint(cifar_dir):
  folder, _ = cifar_dir
  config = cifar_config(folder)
  a = data.load_splits(config, ('train', 'val'))
  config.seed = 123  # The training seed does not move the validation split.
  b = data.load_splits(config, ('train', 'val'))
  np.testing.assert_array_equal(a['val'].images, b['val'].images)
  train_rows = {im.tobytes() for im in a['train'].images}
  assert not any(im.tobytes() in train_rows for im in a['val'].images)


def test_test_only_folder_serves_test_and_refuses_train(cifar_dir, tmp_path):
  folder, arrays = cifar_dir
  only_test = tmp_path / 'only_test'
  only_test.mkdir()
  write_cifar_bin(only_test / 'test_batch.bin', *arrays['test_batch.bin'])
  config = cifar_config(only_test)
  assert len(data.load_splits(config, ('test',))['test']) == 3
  with pytest.raises(DataError, match='no data_batch'):
    data.load_splits(config, ('train',))


def test_missing_split_is_an_error_only_when_asked_for(cifar_dir):
  folder, _ = cifar_dir
  (folder / 'test_batch.bin').unlink()
  config = cifar_config(folder)
  assert len(data.load_splits(config, ('train', 'val'))['train']) == 10
  with pytest.raises(DataError, match="split 'test'.*test_batch.bin"):
    data.load_splits(config, ('test',))


def test_truncated_file_is_a_clear_error(cifar_dir):
  folder, _ = cifar_dir
  path = folder / 'data_batch_2.bin'
  path.write_bytes(path.read_bytes()[:-100])
  with pytest.raises(DataError, match='data_batch_2.bin.*not a positive multiple of the 3073'):
    data.load_splits(cifar_config(folder), ('train',))


def test_label_out_of_range_is_a_clear_error(tmp_path):
  images, labels = random_cifar(4)
  labels[2] = 12
  write_cifar_bin(tmp_path / 'data_batch_1.bin', images, labels)
  with pytest.raises(DataError, match='record 2 has label 12, outside 0..9'):
    data.load_splits(cifar_config(tmp_path), ('train',))
  # Streamed: the same check, the same message.
  config = cifar_config(tmp_path, **{'data.streaming': 'on'})
  with pytest.raises(DataError, match=r'data_batch_1.bin: record 2 has label '
                     r'12, outside 0..9'):
    for name in ('train', 'val'):  # Record 2 is in one of them.
      stream.open_split(config, name).load()


def test_missing_folder_is_a_clear_error(tmp_path):
  with pytest.raises(DataError, match='is not a folder'):
    data.load_splits(cifar_config(tmp_path / 'nope'), ('train',))


def test_grayscale_gives_one_channel_luma(cifar_dir):
  folder, arrays = cifar_dir
  config = cifar_config(folder, **{'data.grayscale': True})
  test = data.load_splits(config, ('test',))['test']
  assert test.images.shape == (3, 32, 32, 1)
  rgb = arrays['test_batch.bin'][0].astype(np.float32)
  expected = np.round(rgb @ np.array([0.299, 0.587, 0.114], np.float32))
  np.testing.assert_array_equal(test.images[..., 0], expected.astype(np.uint8))


def test_synthetic_source_has_the_configured_shape():
  config = tiny_config(**{'data.synthetic_examples': 50, 'model.num_classes': 3})
  splits = data.load_splits(config, ('train', 'val', 'test'))
  assert splits['train'].images.shape == (40, 16, 16, 3)
  assert len(splits['val']) == 10 and len(splits['test']) == 50
  assert splits['train'].labels.max() < 3
  assert data.class_names(config) == ('class_0', 'class_1', 'class_2')


class ReadOnlySource:
  """A new source with only Reader.read (no read_all): the synthetic images,
  example 5 of train unreadable."""
  splits = staticmethod(synthetic.splits)
  class_names = staticmethod(synthetic.class_names)

  class Reader:

    def __init__(self, data_config, split, num_classes):
      self.arrays = synthetic.Reader(data_config, split, num_classes)
      self.bad = 5 if split == 'train' else None

    def __len__(self):
      return len(self.arrays)

    def read(self, i):
      if i == self.bad:
        return None, None, 'OSError: cut short'
      return self.arrays.read(i)

    def name(self, i):
      return f'mine[{i}]'


def test_a_source_with_only_read_loads_and_streams_alike(monkeypatch, capsys):
  monkeypatch.setitem(data.SOURCES, 'mine', ReadOnlySource)
  config = tiny_config(**{'data.source': 'mine'})
  with pytest.raises(DataError, match=r'mine\[5\] is not a readable image '
                     r'\(OSError: cut short\)'):
    data.load_splits(config, ('train',))
  config.data.skip_corrupt = True
  memory = data.load_splits(config, ('train', 'val', 'test'))
  assert 'skipped unreadable image mine[5]' in capsys.readouterr().err
  images, labels = synthetic.load(config.data, 'train', 10)
  images, labels = np.delete(images, 5, 0), np.delete(labels, 5)
  val = data._val_mask(159, config.data.val_fraction)  # pylint: disable=protected-access
  np.testing.assert_array_equal(memory['val'].images, images[val])
  np.testing.assert_array_equal(memory['train'].labels, labels[~val])
  config.data.streaming = 'on'  # Streamed through the same Reader.
  test = stream.open_split(config, 'test').load()
  np.testing.assert_array_equal(test.images, memory['test'].images)
  np.testing.assert_array_equal(test.labels, memory['test'].labels)


def test_channel_stats_match_numpy():
  images = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
  mean, std = data.channel_stats(images)
  np.testing.assert_allclose(mean, (images / 255).mean((0, 1, 2)), rtol=1e-6)
  np.testing.assert_allclose(std, (images / 255).std((0, 1, 2)), rtol=1e-6)


def test_crop_flip_is_a_window_of_the_padded_image_per_example():
  images = np.random.default_rng(0).integers(1, 256, (64, 8, 8, 1), dtype=np.uint8)
  out = np.asarray(augment.random_crop_flip(jax.random.key(0), images, pad=2))
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  offsets_seen, flips = set(), 0
  for i, (src, got) in enumerate(zip(padded, out)):
    matches = [(y, x, f) for y in range(5) for x in range(5) for f in (0, 1)
               if np.array_equal(got, (src[y:y + 8, x:x + 8][:, ::-1] if f
                                       else src[y:y + 8, x:x + 8]))]
    assert matches, f'example {i} is not a crop of its padded image'
    offsets_seen.add(matches[0][:2])
    flips += matches[0][2]
  assert len(offsets_seen) > 10 and 10 < flips < 54  # Drawn per example.


def test_normalize_uses_per_channel_statistics():
  images = np.full((1, 2, 2, 3), 255, np.uint8)
  out = augment.normalize(images, (0.5, 0.0, 1.0), (0.5, 1.0, 2.0))
  np.testing.assert_allclose(out[0, 0, 0], [1.0, 1.0, 0.0])


def write_cifar100(folder, n, seed=0):
  """CIFAR-100 records: coarse label, fine label, image; fine labels up to 99."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  fine = rng.integers(0, 100, n).astype(np.int32)
  write_cifar_bin(folder, images, fine, coarse_labels=fine // 5)
  return images, fine


def test_cifar100_binary_classes_are_the_fine_labels(tmp_path):
  root = tmp_path / 'cifar-100-binary'
  root.mkdir()
  images, fine = write_cifar100(root / 'train.bin', 20)
  write_cifar100(root / 'test.bin', 4, seed=1)
  (root / 'fine_label_names.txt').write_text(
      '\n'.join(f'fine{k}' for k in range(100)) + '\n')
  config = cifar_config(root, **{'data.source': 'cifar100_binary',
                                 'model.num_classes': 100})
  splits = data.load_splits(config, ('train', 'val', 'test'))
  assert (len(splits['train']), len(splits['val']), len(splits['test'])) == (
      15, 5, 4)
  together = np.concatenate([splits['train'].labels, splits['val'].labels])
  assert sorted(together) == sorted(fine)  # Not the coarse ones (fine // 5).
  val = data.positions(20, 'val', config.data)
  np.testing.assert_array_equal(splits['val'].images, images[val])
  np.testing.assert_array_equal(splits['val'].labels, fine[val])
  assert data.class_names(config)[7] == 'fine7'
  streamed = stream.open_split(config, 'val').load()  # Same Reader, per example.
  np.testing.assert_array_equal(streamed.images, splits['val'].images)
  np.testing.assert_array_equal(streamed.labels, splits['val'].labels)
  with pytest.raises(DataError, match='100 classes but model.num_classes is 10'):
    data.class_names(cifar_config(root, **{'data.source': 'cifar100_binary'}))
  (root / 'test.bin').write_bytes((root / 'test.bin').read_bytes()[:-1])
  with pytest.raises(DataError, match='3074-byte CIFAR-100 record'):
    data.load_splits(config, ('test',))
