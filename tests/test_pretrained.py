"""The checkpoints shipped in pretrained/: each restores into the model its
config.json describes, refuses another architecture, predicts from the
command line without writing to its folder, and is as accurate as the README
says on real CIFAR-10 validation images."""
import json
import os
import runpy
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import REAL_DATA, REPO, require_real_data, run_cli
from resnet_jax import data, inference, models, train
from resnet_jax import config as config_lib
from resnet_jax.errors import CheckpointError

PRETRAINED = os.path.join(REPO, 'pretrained')
# train keys newer than the shipped runs, at the values a single run has.
NEW_KEY_DEFAULTS = {'num_seeds': 1, 'sweep_learning_rates': [],
                    'sweep_weight_decays': [], 'shard_members': False,
                    'member_chunk': 0, 'nesterov': True, 'grad_clip_norm': 0.0,
                    'ema_decay': 0.0, 'rank_by': 'ema',
                    'mixup_alpha': 0.0, 'cutmix_alpha': 0.0,
                    'profile_steps': [0, 0], 'eval_translate': 0}
RUNS = sorted(d for d in os.listdir(PRETRAINED)
              if os.path.isdir(os.path.join(PRETRAINED, d)))
CIFAR10_CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog',
                   'frog', 'horse', 'ship', 'truck']
# Validation accuracy (5,000 held-out training images) each must reach on
# this machine's CPU; the README's table has the exact figures.
MIN_ACCURACY = {'resnet20_conv_fast': 0.91, 'resnet20_zeropad_fast': 0.905,
                'cnn20_fast': 0.89}


def load_config(run):
  with open(os.path.join(PRETRAINED, run, 'config.json')) as f:
    # Keys added since (e.g. model.width_factor) at their defaults, as
    # resnet_jax.load reads a run's config.
    config = config_lib.with_defaults(json.load(f))
  config.data.source = 'cifar10_binary'
  config.data.dir = REAL_DATA
  return config


def test_every_shipped_run_has_a_threshold():
  assert RUNS and set(RUNS) == set(MIN_ACCURACY)


@pytest.mark.parametrize('run', RUNS)
def test_restores_with_its_architecture_and_refuses_another(run):
  config = load_config(run)
  state, _, meta = inference.restore(
      config, os.path.join(PRETRAINED, run), 'best', train.create_mesh())
  assert meta['class_names'] == CIFAR10_CLASSES
  model = models.from_config(config)
  expected = model.init(jax.random.key(0), np.zeros((1, 32, 32, 3)),
                        train=False)['params']
  # One member, with its axis (resnet20_conv_fast was re-saved so).
  assert meta['members'] == [{
      'seed': 0, 'learning_rate': config.train.learning_rate,
      'weight_decay': 5e-4, 'frozen': False}]
  assert (jax.tree.map(np.shape, state.params)
          == jax.tree.map(lambda x: (1, *np.shape(x)), expected))
  config.model.shortcut = 'zeropad' if config.model.shortcut == 'conv' else 'conv'
  with pytest.raises(CheckpointError, match='another architecture'):
    inference.restore(config, os.path.join(PRETRAINED, run), 'best',
                      train.create_mesh())


@pytest.mark.slow
@pytest.mark.parametrize('run', RUNS)
def test_accuracy_and_command_line_prediction(run, tmp_path):
  require_real_data()
  config = load_config(run)
  folder = os.path.join(PRETRAINED, run)
  # The weights and views the shipped figure used: the average where the run
  # kept one, flip and translation as its config says.
  restored = inference.restore_for_inference(config, folder, 'best')
  assert restored.weights == ('ema' if config.train.ema_decay else 'raw')
  val = data.load_splits(config, ('val',))['val']
  metrics, probabilities, predictions = restored.predict(
      val, 1000, config.train.eval_flip, config.train.eval_translate)
  assert metrics['num_examples'] == 5000
  assert metrics['accuracy'] >= MIN_ACCURACY[run]
  # --mode=predict on PNG files of three validation images gives the same
  # top class as above, and leaves the shipped folder untouched.
  paths = []
  for i in range(3):
    paths.append(str(tmp_path / f'val{i}.png'))
    Image.fromarray(val.images[i]).save(paths[-1])
  before = subprocess.run(['git', 'status', '--porcelain', '--ignored',
                           folder], cwd=REPO, capture_output=True, text=True)
  result = run_cli([sys.executable, '-m', 'resnet_jax.main',
                    f'--config={REPO}/configs/resnet_conv.py',
                    f'--workdir={folder}', '--mode=predict', '--json',
                    f'--images={",".join(paths)}']
                   + [f'--config.{k}={config[k.split(".")[0]][k.split(".")[1]]}'
                      for k in ('model.shortcut', 'model.name',
                                'model.num_layers', 'train.eval_flip',
                                'train.eval_translate', 'train.ema_decay')])
  assert result.returncode == 0, result.stderr
  top = [p['top'][0]['label']
         for p in json.loads(result.stdout.splitlines()[-1])['predictions']]
  assert top == predictions[:3].tolist()
  after = subprocess.run(['git', 'status', '--porcelain', '--ignored', folder],
                         cwd=REPO, capture_output=True, text=True)
  assert after.stdout == before.stdout


def test_fast_configs_share_one_recipe_and_match_the_shipped_run():
  configs = {name: runpy.run_path(os.path.join(REPO, 'configs', f'{name}.py'))[
      'get_config']().to_dict() for name in
             ('resnet_conv_fast', 'resnet_zeropad_fast', 'cnn_fast',
              'resnet_conv_20ep')}
  assert configs['resnet_conv_fast']['train']['steps'] == 10_500
  assert (configs['resnet_conv_fast']['train']
          == configs['resnet_zeropad_fast']['train']
          == configs['cnn_fast']['train'])
  assert configs['resnet_zeropad_fast']['model']['shortcut'] == 'zeropad'
  assert configs['cnn_fast']['model']['name'] == 'cnn'
  for name, config in configs.items():  # What a shipped run trained with.
    shipped = os.path.join(PRETRAINED, name.replace('resnet_', 'resnet20_')
                           .replace('cnn_', 'cnn20_'), 'config.json')
    if os.path.exists(shipped):
      with open(shipped) as f:
        trained = json.load(f)['train']
      recipe = json.loads(json.dumps(config['train']))
      # Keys added since (members) must hold their single-run defaults.
      assert {k: trained.get(k, v) for k, v in recipe.items()} == recipe
      missing = recipe.keys() - trained.keys()  # Older runs lack these.
      assert missing <= NEW_KEY_DEFAULTS.keys()
      assert {k: recipe[k] for k in missing} == {
          k: NEW_KEY_DEFAULTS[k] for k in missing}
