"""data.streaming: splits read from disk batch by batch (data/stream.py)."""
import jax
import numpy as np
import pytest

from conftest import tiny_config, write_cifar_bin
from test_folder import corrupt, folder_config, make_folder
from test_tfds import prepare, tfds_config
from test_train import restore_params
from resnet_jax import data, train
from resnet_jax.data import order, stream
from resnet_jax.errors import DataError


@pytest.fixture
def numbered_cifar(tmp_path):
  """120 CIFAR records in three files; record i carries i in its first pixel."""
  folder = tmp_path / 'cifar'
  folder.mkdir()
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (120, 32, 32, 3), dtype=np.uint8)
  images[:, 0, 0, 0] = np.arange(120)
  labels = rng.integers(0, 10, 120)
  for f, (start, stop) in enumerate(((0, 50), (50, 90), (90, 120)), start=1):
    write_cifar_bin(folder / f'data_batch_{f}.bin', images[start:stop],
                    labels[start:stop])
  # 96 train / 24 val; batch 16: 6 steps per epoch, no remainder.
  return tiny_config(**{'data.source': 'cifar10_binary', 'data.dir': str(folder),
                        'data.image_size': 32, 'data.streaming': 'on',
                        'train.batch_size': 16, 'train.steps': 20})


def ids(batch):
  """Example numbers of the batch of the first (here the only) member."""
  return np.asarray(batch['image'])[0, :, 0, 0, 0].astype(int)


def test_order_is_the_in_memory_order():
  """Streamed batches are the in-memory path's, so runs agree: both are
  batch i of epoch e's permutation of the member's order key."""
  n, batch_size, seed = 37, 8, 5  # 4 steps per epoch, the remainder dropped.
  streamed = stream._EpochOrder(seed, n)  # pylint: disable=protected-access
  order_key, _ = jax.random.split(jax.random.key(seed))
  in_memory = order.EpochOrders({'label': np.arange(n)}, order_key[None],
                                batch_size, 0,
                                train.member_sharding(train.create_mesh()))
  for step in range(10):  # Three epochs.
    epoch, i = divmod(step, n // batch_size)
    expected = jax.random.permutation(jax.random.fold_in(order_key, epoch),
                                      n)[i * batch_size:(i + 1) * batch_size]
    inputs = next(in_memory)
    np.testing.assert_array_equal(
        order.sample_batch(inputs['data'], inputs['order'][0], step,
                           batch_size)['label'], expected)
    np.testing.assert_array_equal(
        stream.batch_examples(streamed, step, n // batch_size, batch_size),
        expected)


def test_epoch_reads_each_training_example_once_and_no_validation(
    numbered_cifar):
  config = numbered_cifar
  mesh = train.create_mesh()
  split = stream.open_split(config, 'train')
  batches = stream.TrainBatches(split, config, 0, mesh)
  seen = np.concatenate([ids(next(batches)) for _ in range(6)])
  batches.close()
  val = data._val_mask(120, config.data.val_fraction)  # pylint: disable=protected-access
  assert sorted(seen) == np.flatnonzero(~val).tolist()
  val_split = stream.open_split(config, 'val').load()
  assert sorted(val_split.images[:, 0, 0, 0]) == np.flatnonzero(val).tolist()
  # The same pixels and labels as the in-memory path.
  memory = data.load_splits(config, ('train', 'val'))
  np.testing.assert_array_equal(split.load().images, memory['train'].images)
  np.testing.assert_array_equal(val_split.labels, memory['val'].labels)


def test_loader_started_at_a_step_gives_that_steps_batch(numbered_cifar):
  config = numbered_cifar
  mesh = train.create_mesh()
  split = stream.open_split(config, 'train')
  from_zero = stream.TrainBatches(split, config, 0, mesh)
  batches = [jax.device_get(next(from_zero)) for _ in range(9)]
  from_zero.close()
  resumed = stream.TrainBatches(split, config, 7, mesh)  # Mid second epoch.
  for step in (7, 8):
    batch = jax.device_get(next(resumed))
    for key in ('image', 'label'):
      np.testing.assert_array_equal(batch[key], batches[step][key])
  resumed.close()
  assert not np.array_equal(ids(batches[0]), ids(batches[6]))  # New epoch.


@pytest.mark.slow
def test_streamed_folder_trains_resumes_and_matches_in_memory(tmp_path):
  root = make_folder(tmp_path / 'images', {'train': {'a': 30, 'b': 30}})
  overrides = {'train.steps': 8, 'train.eval_every': 4,
               'train.log_every': 2}
  in_memory = str(tmp_path / 'memory')
  train.train_and_evaluate(
      folder_config(root, **overrides, **{'data.streaming': 'off'}), in_memory)
  # auto, over budget: streams train and val instead of refusing.
  tiny_budget = {'data.max_in_memory_gb': 1e-6, **overrides}
  config = folder_config(root, **tiny_budget, **{'data.streaming': 'auto'})
  assert stream.should_stream(config)
  straight = str(tmp_path / 'straight')
  summary = train.train_and_evaluate(config, straight)
  assert summary['step'] == 8 and summary['val_accuracy'] is not None
  # Stopped at step 3 and resumed: the batches from step 3 on are the same.
  resumed = str(tmp_path / 'resumed')
  config = folder_config(root, **overrides, **{'data.streaming': 'on'})
  train.train_and_evaluate(config, resumed, stop_at_step=3)
  train.train_and_evaluate(config, resumed)
  step, params = restore_params(straight)
  assert step == 8
  jax.tree.map(np.testing.assert_array_equal, params,
               restore_params(resumed)[1])
  # Streaming changes where batches are built, not which: the same result.
  jax.tree.map(np.testing.assert_array_equal, params,
               restore_params(in_memory)[1])
  # off keeps the refusal, and names the way out.
  with pytest.raises(DataError, match=r'over data.max_in_memory_gb=1e-06.*'
                     r'data.streaming=auto'):
    train.train_and_evaluate(
        folder_config(root, **tiny_budget, **{'data.streaming': 'off'}),
        str(tmp_path / 'refused'))


def test_corrupt_image_is_a_one_line_error_or_skipped(tmp_path, capsys):
  root = make_folder(tmp_path, {'train': {'a': 12, 'b': 12}})
  bad = corrupt(root, 'bad.png', 'garbage')
  config = folder_config(root, **{'data.streaming': 'on',
                                  'train.batch_size': 5})
  split = stream.open_split(config, 'train')
  with pytest.raises(DataError, match=r'bad.png is not a readable image') as e:
    split.load()
  assert '\n' not in str(e.value) and bad in str(e.value)
  with pytest.raises(DataError, match=r'bad.png is not a readable image'):
    batches = stream.TrainBatches(split, config, 0, train.create_mesh())
    for _ in range(len(split) // 5):  # One epoch reads every example.
      next(batches)
  config.data.skip_corrupt = True
  capsys.readouterr()
  images = stream.open_split(config, 'train').load().images
  assert len(images) == len(split)
  assert capsys.readouterr().err.startswith(
      f'warning: skipped unreadable image {bad}')


def test_tfds_array_record_streams_the_in_memory_pixels(tmp_path):
  """Random access to TFDS's array_record files, 'val' carved, grayscale."""
  prepare(tmp_path, {'train': 15, 'test': 4}, odd_sizes=True)
  config = tfds_config(tmp_path, **{'data.grayscale': True,
                                    'data.streaming': 'on'})
  memory = data.load_splits(config, ('train', 'val', 'test'))
  for name in ('train', 'val', 'test'):
    streamed = stream.open_split(config, name).load()
    assert streamed.images.shape[1:] == (16, 16, 1)
    np.testing.assert_array_equal(streamed.images, memory[name].images)
    np.testing.assert_array_equal(streamed.labels, memory[name].labels)


def test_auto_counts_splits_without_reading_them(tmp_path, numbered_cifar):
  """'auto' decides from counts (TFDS: its metadata, no data source)."""
  for name, n in (('train', 96), ('val', 24)):
    assert stream.split_size(numbered_cifar, name) == n
  prepare(tmp_path, {'train': 15, 'test': 4})
  config = tfds_config(tmp_path, **{'data.streaming': 'auto'})
  assert stream.split_size(config, 'val') == 3
  assert not stream.should_stream(config)
  config.data.max_in_memory_gb = 1e-6
  assert stream.should_stream(config)


@pytest.mark.slow
def test_evaluate_and_samples_stream_a_split_too_large_for_memory(tmp_path):
  """--mode=evaluate/samples on a test split over budget: read from disk in
  batches, with the in-memory metrics, confusion matrix and samples."""
  from resnet_jax import evaluate, inference, predict
  root = make_folder(tmp_path / 'images', {'train': {'a': 20, 'b': 20},
                                           'test': {'a': 13, 'b': 14}})
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(folder_config(root, **{'train.steps': 4}), workdir)
  memory = folder_config(root, **{'data.streaming': 'off'})
  streamed = folder_config(root, **{'data.max_in_memory_gb': 1e-6})
  assert stream.should_stream_split(streamed, 'test')
  assert isinstance(inference.load_split(streamed, 'test'), stream.StreamedSplit)
  expected = evaluate.evaluate(memory, workdir, 'latest', 'test')
  with open(tmp_path / 'run' / 'eval' / f'test_step{expected["step"]}' /
            'per_class_accuracy.json') as f:
    expected_per_class = f.read()
  result = evaluate.evaluate(streamed, workdir, 'latest', 'test')
  assert result['num_examples'] == expected['num_examples'] == 27
  assert result['accuracy'] == expected['accuracy']
  assert result['loss'] == pytest.approx(expected['loss'], rel=1e-6)
  with open(tmp_path / 'run' / 'eval' / f'test_step{result["step"]}' /
            'per_class_accuracy.json') as f:
    assert f.read() == expected_per_class
  rows = [predict.samples(c, workdir, 'latest', 'test', num_samples=5)['samples']
          for c in (memory, streamed)]
  assert rows[0] == rows[1]


def test_a_source_without_a_stream_reader_loads_in_memory(monkeypatch):
  class Source:  # A new source that has no streaming reader.
    splits = staticmethod(lambda data_config: ('train',))
    load = staticmethod(lambda data_config, split, num_classes: (
        np.zeros((8, 16, 16, 3), np.uint8), np.zeros(8, np.int32)))
    class_names = staticmethod(lambda data_config: tuple('abcdefghij'))
  monkeypatch.setitem(data.SOURCES, 'mine', Source)
  config = tiny_config(**{'data.source': 'mine'})
  assert not stream.should_stream(config)
  assert len(data.load_splits(config, ['train'])['train']) == 6
  config.data.streaming = 'on'
  with pytest.raises(DataError, match='data.source=mine has no streaming'):
    stream.open_split(config, 'train')
