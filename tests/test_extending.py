"""docs/extending.md's examples, run as written: a model, a data source, a
loss and an augmentation each train with the code of the guide, so the guide
cannot drift from the code."""
import importlib.util
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, tiny_config
from resnet_jax import data, evaluate, inference, models, train
from resnet_jax.data import augment, stream

GUIDE = os.path.join(REPO, 'docs', 'extending.md')


def python_blocks() -> dict[str, str]:
  """The guide's python blocks by section: model, source, loss, augmentation."""
  with open(GUIDE) as f:
    text = f.read()
  sections = re.split(r'^## ', text, flags=re.M)[1:]
  blocks = {}
  for section in sections:
    found = re.findall(r'```python\n(.*?)```', section, flags=re.S)
    assert len(found) <= 1, section.splitlines()[0]
    if found:
      blocks[section.splitlines()[0]] = found[0]
  return blocks


def run_block(heading: str, namespace: dict) -> dict:
  exec(compile(python_blocks()[heading], GUIDE, 'exec'), namespace)  # pylint: disable=exec-used
  return namespace


def test_every_section_has_one_example():
  assert set(python_blocks()) == {'A new model', 'A new data source',
                                  'A new loss', 'A new augmentation'}


def test_the_model_example_registers_trains_and_evaluates(tmp_path,
                                                          monkeypatch):
  monkeypatch.setitem(models.MODELS, 'mlp', None)  # Removed after the test.
  run_block('A new model', vars(models).copy())
  assert models.MODELS['mlp'] is not None
  config = tiny_config(**{'model.name': 'mlp', 'train.steps': 4,
                          'train.eval_every': 4})
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary['num_params'] == 16 * 16 * 3 * 256 + 256 + 2 * 256 + 2570
  report = evaluate.evaluate(config, str(tmp_path), 'latest', 'val')
  assert report['accuracy'] == pytest.approx(summary['val_accuracy'])


@pytest.mark.slow
def test_the_data_source_example_is_one_file_and_one_line(tmp_path,
                                                          monkeypatch):
  path = tmp_path / 'brightest.py'  # resnet_jax/data/brightest.py.
  path.write_text(python_blocks()['A new data source'])
  spec = importlib.util.spec_from_file_location('brightest', path)
  brightest = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(brightest)
  monkeypatch.setitem(data.SOURCES, 'brightest', brightest)  # The one line.
  config = tiny_config(**{'data.source': 'brightest', 'model.num_classes': 3,
                          'train.steps': 4, 'train.eval_every': 4})
  splits = data.load_splits(config, ('train', 'val', 'test'))
  assert [len(splits[s]) for s in ('train', 'val', 'test')] == [77, 19, 32]
  sums = splits['test'].images.reshape(32, -1, 3).sum(1)
  np.testing.assert_array_equal(splits['test'].labels, sums.argmax(1))
  assert data.class_names(config) == ('red', 'green', 'blue')
  streamed = stream.open_split(config, 'val').load()
  np.testing.assert_array_equal(streamed.images, splits['val'].images)
  in_memory = train.train_and_evaluate(config, str(tmp_path / 'memory'))
  config.data.streaming = 'on'
  on_disk = train.train_and_evaluate(config, str(tmp_path / 'streamed'))
  assert on_disk['val_loss'] == pytest.approx(in_memory['val_loss'], rel=1e-5)


def test_the_loss_example_is_focal_loss_and_trains(tmp_path, monkeypatch):
  namespace = run_block('A new loss', vars(inference).copy())
  focal_loss = namespace['focal_loss']
  logits = jax.random.normal(jax.random.key(0), (64, 10)) * 3
  labels = jnp.arange(64) % 10
  cross_entropy = inference.cross_entropy(logits, labels, 0.1)
  np.testing.assert_allclose(focal_loss(logits, labels, 0.1, gamma=0.0),
                             cross_entropy, rtol=1e-5, atol=1e-6)
  focal = focal_loss(logits, labels, 0.1)
  assert bool(jnp.all(focal <= cross_entropy + 1e-6))
  confident = 8 * jax.nn.one_hot(labels, 10)  # Right, and sure of it.
  assert bool(jnp.all(focal_loss(confident, labels) <
                      0.1 * inference.cross_entropy(confident, labels)))
  monkeypatch.setattr(inference, 'cross_entropy', focal_loss)
  summary = train.train_and_evaluate(tiny_config(**{'train.steps': 3}),
                                     str(tmp_path))
  assert np.isfinite(summary['val_loss'])


def test_the_augmentation_example_is_pure_and_trains(tmp_path, monkeypatch):
  namespace = run_block('A new augmentation', vars(augment).copy())
  random_brightness = namespace['random_brightness']
  images = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), np.uint8)
  key = jax.random.key(1)
  once, again = random_brightness(key, images), random_brightness(key, images)
  np.testing.assert_array_equal(once, again)  # A function of the key only.
  assert once.dtype == np.uint8 and once.shape == images.shape
  offsets = once.astype(int) - images.astype(int)
  unclipped = (images > 40) & (images < 215)
  per_image = [np.unique(o[u]) for o, u in zip(offsets, unclipped)]
  assert all(len(p) == 1 and abs(p[0]) <= 32 for p in per_image)
  assert len({int(p[0]) for p in per_image}) > 1  # Each image its own.
  crop_flip = augment.random_crop_flip
  monkeypatch.setattr(augment, 'random_crop_flip', lambda rng, x, **kw: (
      random_brightness(rng, crop_flip(rng, x, **kw))))
  summary = train.train_and_evaluate(tiny_config(**{'train.steps': 3}),
                                     str(tmp_path))
  assert np.isfinite(summary['val_loss'])
