"""docs/python_api.md's examples, run as written from the checkout's root:
each public name has a section whose example works, so the guide cannot
drift from the code."""
import os
import re
import tempfile

import numpy as np
import pytest

import resnet_jax
from conftest import REPO

GUIDE = os.path.join(REPO, 'docs', 'python_api.md')


def read_guide() -> str:
  with open(GUIDE) as f:
    return f.read()


def python_blocks() -> dict[str, str]:
  """The guide's python block of each `## ` section ('' before the first)."""
  sections = re.split(r'^## ', read_guide(), flags=re.M)
  blocks = {}
  for n, section in enumerate(sections):
    found = re.findall(r'```python\n(.*?)```', section, flags=re.S)
    assert len(found) <= 1, section.splitlines()[0]
    if found:
      blocks['' if n == 0 else section.splitlines()[0]] = found[0]
  return blocks


def run_block(heading: str, namespace=None) -> dict:
  namespace = {} if namespace is None else namespace
  exec(compile(python_blocks()[heading], GUIDE, 'exec'), namespace)  # pylint: disable=exec-used
  return namespace


@pytest.fixture(autouse=True)
def from_the_checkout(monkeypatch, tmp_path):
  monkeypatch.chdir(REPO)  # The examples' pretrained/ paths.
  monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))  # Their workdirs.


def test_every_public_name_has_a_section_with_an_example():
  assert set(python_blocks()) == {'', 'Errors'} | {
      f'resnet_jax.{name}' for name in resnet_jax.__all__}


def test_the_three_lines():
  images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), np.uint8)
  namespace = run_block('', {'images': images})
  assert namespace['probabilities'].shape == (3, 10)


def test_load_example(capsys):
  namespace = run_block('resnet_jax.load')
  probabilities = namespace['probabilities']
  assert probabilities.shape == (4, 10)
  np.testing.assert_allclose(probabilities.sum(1), 1, rtol=1e-5)
  assert namespace['top3'].shape == (4, 3)
  out = capsys.readouterr().out
  assert out.startswith('Classifier(ResNet-20 (conv shortcuts), step 10500')
  names = namespace['model'].class_names
  assert out.splitlines()[1] == str([[names[k] for k in row]
                                     for row in namespace['top3']])


def test_classifier_example_matches_predict():
  namespace = run_block('resnet_jax.Classifier')
  model, logits = namespace['model'], namespace['logits']
  assert model.step == 10_500 and len(model.members) == 1
  probabilities = model.predict(namespace['images'])
  np.testing.assert_allclose(np.asarray(logits).argmax(-1),
                             probabilities.argmax(-1))


def test_get_config_example():
  config = run_block('resnet_jax.get_config')['config']
  assert config.train.steps == 2_000 and config.train.warmup_steps == 100


def test_train_and_evaluate_example():
  namespace = run_block('resnet_jax.train_and_evaluate')
  metrics, model = namespace['metrics'], namespace['model']
  assert metrics['step'] == 4
  assert [m['learning_rate'] for m in metrics['members']] == [0.05, 0.1]
  assert model.step == 4 and model.members[0]['learning_rate'] == 0.1


def test_errors_example():
  message = run_block('Errors')['message']
  assert message.startswith('these images are (28, 28, 1) but the config '
                            'asks for (32, 32, 3)')
