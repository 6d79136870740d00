"""The Python API (resnet_jax/api.py): its predictions are --mode=evaluate's
on the same images, member by member and as an ensemble; bad input is one
UserError naming the problem; `import resnet_jax` stays light."""
import inspect
import json
import os
import shutil
import subprocess
import sys
import traceback

import numpy as np
import pytest

import resnet_jax
from conftest import REAL_DATA, REPO, random_cifar, run_cli, tiny_config
from conftest import write_cifar_bin
from resnet_jax import data, evaluate
from resnet_jax.errors import CheckpointError, ConfigError, DataError, UserError

SHIPPED = os.path.join(REPO, 'pretrained', 'resnet20_conv_fast')
NUM_IMAGES = 200


def accuracy(probabilities, labels) -> float:
  return float(np.mean(np.argmax(probabilities, -1) == labels))


def test_import_is_lazy():
  code = '\n'.join([
      'import sys',
      'import resnet_jax',
      "assert not {'jax', 'flax'} & set(sys.modules), 'import resnet_jax'",
      'from resnet_jax import config',  # What every config file does.
      "assert not {'resnet_jax.api', 'resnet_jax.train', 'orbax.checkpoint'}"
      " & set(sys.modules), 'from resnet_jax import config'",
      'assert callable(resnet_jax.load)',
      "assert 'resnet_jax.api' in sys.modules",
  ])
  result = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, cwd=REPO, timeout=300)
  assert result.returncode == 0, result.stderr


def test_public_names_are_typed_and_documented():
  assert set(resnet_jax.__all__) <= set(dir(resnet_jax))
  for name in resnet_jax.__all__:
    obj = getattr(resnet_jax, name)
    assert inspect.getdoc(obj), name
    if inspect.isfunction(obj):
      signature = inspect.signature(obj)
      assert signature.return_annotation is not inspect.Signature.empty, name
      assert all(p.annotation is not inspect.Parameter.empty
                 for p in signature.parameters.values()), name
  with pytest.raises(AttributeError, match='no_such_name'):
    resnet_jax.no_such_name  # pylint: disable=pointless-statement


@pytest.fixture(scope='module')
def shipped():
  return resnet_jax.load(SHIPPED)


@pytest.fixture(scope='module')
def test_folder(tmp_path_factory):
  """A CIFAR-10 folder whose test split is NUM_IMAGES images: real
  validation images where ../shared has CIFAR-10, else random ones."""
  folder = tmp_path_factory.mktemp('cifar') / 'cifar-10-batches-bin'
  folder.mkdir()
  if os.path.isdir(REAL_DATA):
    config = tiny_config(**{'data.source': 'cifar10_binary',
                            'data.dir': REAL_DATA, 'data.image_size': 32})
    val = data.load_splits(config, ('val',))['val']
    images, labels = val.images[:NUM_IMAGES], val.labels[:NUM_IMAGES]
  else:
    images, labels = random_cifar(NUM_IMAGES, seed=5)
  write_cifar_bin(folder / 'test_batch.bin', images, labels)
  return folder, images, labels


def test_load_gives_the_shipped_model(shipped):
  assert shipped.step == 10_500
  assert shipped.class_names[:2] == ['airplane', 'automobile']
  assert shipped.config.model.shortcut == 'conv'
  # One member: plain variables that the module applies to directly.
  images = np.zeros((2, 32, 32, 3), np.float32)
  logits = shipped.model.apply(shipped.variables, images, train=False)
  assert logits.shape == (2, 10)


@pytest.mark.parametrize('flip', [
    True, pytest.param(False, marks=pytest.mark.slow)])  # One CLI run each.
def test_predict_has_the_accuracy_of_mode_evaluate(shipped, test_folder,
                                                   tmp_path, flip):
  folder, images, labels = test_folder
  workdir = tmp_path / 'run'  # evaluate writes eval/ into its workdir.
  shutil.copytree(SHIPPED, workdir)
  result = run_cli([sys.executable, '-m', 'resnet_jax.main',
                    f'--config={REPO}/configs/resnet_conv_fast.py',
                    f'--workdir={workdir}', '--mode=evaluate', '--split=test',
                    '--config.data.source=cifar10_binary',
                    f'--config.data.dir={folder}',
                    f'--config.train.eval_flip={flip}'])
  assert result.returncode == 0, result.stderr
  report = json.loads(result.stdout.splitlines()[-1])
  assert report['num_examples'] == NUM_IMAGES
  probabilities = shipped.predict(images, flip=flip)
  assert probabilities.shape == (NUM_IMAGES, 10)
  assert accuracy(probabilities, labels) == report['accuracy']
  loss = -np.mean(np.log(probabilities[np.arange(NUM_IMAGES), labels]))
  assert loss == pytest.approx(report['loss'], rel=1e-4)
  # JAX arrays and floats in [0, 1] give the same predictions.
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  floats = jnp.asarray(images, jnp.float32) / 255
  np.testing.assert_allclose(shipped.predict(floats, flip=flip),
                             probabilities, atol=1e-5)


@pytest.mark.slow
def test_members_and_ensemble_match_evaluate_after_training(tmp_path):
  config = tiny_config(**{'train.num_seeds': 2, 'train.steps': 4,
                          'train.eval_every': 4})
  summary = resnet_jax.train_and_evaluate(config, str(tmp_path))
  assert summary['step'] == 4 and len(summary['members']) == 2
  report = evaluate.evaluate(config, str(tmp_path), 'latest', 'val')
  val = data.load_splits(config, ('val',))['val']
  ensemble = resnet_jax.load(str(tmp_path), 'latest')
  assert (accuracy(ensemble.predict(val.images), val.labels)
          == report['ensemble']['accuracy'])
  assert np.shape(ensemble.variables['params']['Dense_0']['bias']) == (2, 10)
  for k in range(2):
    alone = resnet_jax.load(str(tmp_path), 4, member=k)
    assert (accuracy(alone.predict(val.images), val.labels)
            == report['members'][k]['accuracy'])
  with pytest.raises(ConfigError, match='member=2 is not valid'):
    resnet_jax.load(str(tmp_path), member=2)


def test_load_fills_config_keys_older_runs_lack():
  with open(os.path.join(REPO, 'pretrained', 'cnn20_fast', 'config.json')) as f:
    saved = json.load(f)
  assert 'member_chunk' not in saved['train']  # Written before the key.
  loaded = resnet_jax.load(os.path.join(REPO, 'pretrained', 'cnn20_fast'))
  assert loaded.config.train.member_chunk == 0
  assert loaded.config.model.name == 'cnn'
  assert loaded.config.train.steps == saved['train']['steps']


def test_get_config_by_name_or_path_with_overrides():
  by_name = resnet_jax.get_config('resnet_conv_fast', {'train.steps': 5,
                                                       'train.warmup_steps': 1})
  by_path = resnet_jax.get_config(
      os.path.join(REPO, 'configs', 'resnet_conv_fast.py'))
  assert by_name.train.steps == 5 and by_path.train.steps == 10_500
  assert by_name.train.eval_flip is True  # The file's own value.
  swept = resnet_jax.get_config('resnet_conv',
                                {'train.sweep_learning_rates': [0.05, 0.1]})
  assert swept.train.sweep_learning_rates == (0.05, 0.1)


def one_error(call, error_type, match):
  """call() raises error_type (a UserError) matching `match`, with no
  chained traceback of JAX or Orbax internals."""
  with pytest.raises(error_type, match=match) as raised:
    call()
  assert issubclass(error_type, UserError)
  text = ''.join(traceback.format_exception(raised.value))
  assert 'During handling' not in text and 'direct cause' not in text
  assert '/jax/' not in text and '/orbax/' not in text


def test_bad_input_is_one_clear_error(shipped, tmp_path):
  images = np.zeros((3, 32, 32, 3), np.uint8)
  one_error(lambda: resnet_jax.load(str(tmp_path)), CheckpointError,
            'no checkpoint in')
  one_error(lambda: resnet_jax.load(SHIPPED, member=1), ConfigError,
            'member=1 is not valid: the checkpoint has 1 member')
  one_error(lambda: resnet_jax.load(SHIPPED, member='all'), ConfigError,
            "member='all' must be a member index")
  one_error(lambda: resnet_jax.load(SHIPPED, checkpoint='newest'),
            CheckpointError, "'newest' is not valid")
  one_error(lambda: resnet_jax.load(SHIPPED, checkpoint=7), CheckpointError,
            'no checkpoint at step 7')
  one_error(lambda: shipped.predict(images[0]), DataError,
            r'not of shape \(32, 32, 3\); one image\? pass images\[None\]')
  one_error(lambda: shipped.predict(images[..., :1]), DataError,
            r'these images are \(32, 32, 1\) but the config asks for '
            r'\(32, 32, 3\)')
  one_error(lambda: shipped.predict(images[:, :28]), DataError,
            r'\(28, 32, 3\)')
  one_error(lambda: shipped.predict(images.astype(np.int64)), DataError,
            'uint8 .* or float .*, not int64')
  one_error(lambda: shipped.predict(images.astype(np.float32) + 7), DataError,
            r'float images must be in \[0, 1\]')
  one_error(lambda: shipped.predict(images[:0]), DataError, 'empty')
  one_error(lambda: shipped.predict(images, batch_size=0), ConfigError,
            'batch_size=0')
  one_error(lambda: resnet_jax.get_config('resnet_nope'), ConfigError,
            "no config 'resnet_nope'.*resnet_conv_fast")
  one_error(lambda: resnet_jax.get_config('resnet_conv', {'train.stepz': 5}),
            ConfigError, 'unknown config key train.stepz; keys of train: ')
  one_error(lambda: resnet_jax.get_config('resnet_conv', {'train.steps': 'x'}),
            ConfigError, "train.steps='x' does not fit")
  one_error(lambda: resnet_jax.get_config('resnet_conv', {'train.steps': 0}),
            ConfigError, 'train.steps=0 must be an integer >= 1')
