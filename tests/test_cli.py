"""The command line: modes, and bad input as one line, exit 2, nothing touched."""
import json
import os
import re
import subprocess

import jax
import pytest

from conftest import (REPO, cli_args, random_cifar, run_cli, snapshot,
                      tiny_config, write_cifar_bin)
from resnet_jax import main, train
from resnet_jax.workdir import LOCK_FILE


def assert_one_line_error(result, pattern):
  assert result.returncode == 2, result.stdout + result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and pattern in last, result.stderr
  assert 'Traceback' not in result.stderr


def test_evaluate_prints_json_result_last(trained_workdir):
  result = run_cli(cli_args(tiny_config(), trained_workdir, '--mode=evaluate',
                            '--split=val', '--checkpoint=latest'))
  assert result.returncode == 0, result.stderr
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report['split'] == 'val' and report['step'] == 12
  assert report['num_examples'] == 32 and 0 <= report['accuracy'] <= 1
  assert set(report) == {'split', 'accuracy', 'loss', 'num_examples', 'step',
                         'accuracy_std', 'members', 'ensemble', 'weights'}
  assert report['weights'] == 'raw'  # The run kept no average.
  # One member: it is the mean and the ensemble.
  assert report['accuracy_std'] == 0 and len(report['members']) == 1
  member = report['members'][0]
  assert member == {'seed': 0, 'learning_rate': 0.1, 'weight_decay': 5e-4,
                    'accuracy': report['accuracy'], 'loss': report['loss']}
  assert report['ensemble']['accuracy'] == report['accuracy']
  assert report['ensemble']['loss'] == pytest.approx(report['loss'], rel=1e-5)


@pytest.mark.slow
def test_train_on_cifar_binary_then_evaluate_a_test_only_folder(
    tmp_path, cifar_dir):
  folder, arrays = cifar_dir
  config = tiny_config(**{'data.source': 'cifar10_binary', 'data.dir': str(folder),
                          'data.image_size': 32, 'train.batch_size': 4,
                          'train.steps': 2, 'train.warmup_steps': 0,
                          'train.eval_every': 2, 'data.val_fraction': 0.3})
  result = run_cli(cli_args(config, tmp_path / 'w'))
  assert result.returncode == 0, result.stderr
  only_test = tmp_path / 'only_test'
  only_test.mkdir()
  write_cifar_bin(only_test / 'test_batch.bin', *arrays['test_batch.bin'])
  (only_test / 'batches.meta.txt').write_text((folder / 'batches.meta.txt').read_text())
  config.data.dir = str(only_test)
  result = run_cli(cli_args(config, tmp_path / 'w', '--mode=evaluate'))
  assert result.returncode == 0, result.stderr
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report['split'] == 'test' and report['num_examples'] == 3
  assert report['step'] == 2


def test_evaluate_without_checkpoint_is_an_error(tmp_path):
  result = run_cli(cli_args(tiny_config(), tmp_path / 'empty', '--mode=evaluate'))
  assert_one_line_error(result, 'no checkpoint in')
  assert not (tmp_path / 'empty').exists()


@pytest.mark.parametrize('override,message', [
    ({'model.shortcut': 'zeropad'}, "model.shortcut='conv' (config: 'zeropad')"),
    ({'model.num_layers': 2}, 'model.num_layers=1 (config: 2)'),
    ({'model.name': 'cnn'}, "model.name='resnet' (config: 'cnn')"),
])
@pytest.mark.parametrize('mode', ['train', 'evaluate'])
def test_another_architecture_is_refused_and_nothing_changes(
    trained_workdir, override, message, mode):
  # The lock aside: a refused training run took it and released it.
  lock = str(trained_workdir / LOCK_FILE)
  before = snapshot(trained_workdir)
  result = run_cli(cli_args(tiny_config(**override), trained_workdir,
                            f'--mode={mode}'))
  assert_one_line_error(result, message)
  after = snapshot(trained_workdir)
  assert after.pop(lock)[0] == before.pop(lock)[0]  # Empty: released.
  assert after == before


@pytest.mark.parametrize('override,message', [
    ({'data.dir': '/no/such/folder', 'data.source': 'cifar10_binary'},
     "data.dir '/no/such/folder' is not a folder"),
    ({'model.name': 'vgg'}, "model.name='vgg' is not valid; choose one of: resnet, cnn"),
    ({'model.shortcut': 'bad'}, 'choose one of: conv, zeropad'),
    ({'train.optimizer': 'lion'}, 'choose one of: sgd, adamw'),
    ({'data.val_fraction': 1.5}, 'data.val_fraction=1.5 must be in [0, 1)'),
    ({'train.batch_size': 0}, 'train.batch_size=0 must be an integer >= 1'),
    ({'train.warmup_steps': 50}, 'train.warmup_steps=50 must be below train.steps=12'),
])
def test_bad_config_values(tmp_path, override, message):
  result = run_cli(cli_args(tiny_config(**override), tmp_path / 'w'))
  assert_one_line_error(result, message)
  assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize('flag,message', [
    ('--config.model.depth=3', 'unknown config key --config.model.depth; keys of model: '),
    ('--config.optim.lr=3', 'unknown config key --config.optim.lr; keys of the config: '),
    ('--config.model.num_layers=abc', 'invalid literal for int()'),
    ('--mode=fly', 'value should be one of <train|evaluate|samples|predict|plot_schedule>'),
])
def test_bad_flags(tmp_path, flag, message):
  result = run_cli(cli_args(tiny_config(), tmp_path / 'w', flag))
  assert_one_line_error(result, message)


@pytest.mark.parametrize('defect,message', [
    ('truncated', 'not a positive multiple of the 3073-byte'),
    ('bad_label', 'has label 200, outside 0..9'),
])
def test_bad_data_files(tmp_path, defect, message):
  folder = tmp_path / 'data'
  folder.mkdir()
  images, labels = random_cifar(20)
  if defect == 'bad_label':
    labels[5] = 200
  write_cifar_bin(folder / 'data_batch_1.bin', images, labels)
  if defect == 'truncated':
    path = folder / 'data_batch_1.bin'
    path.write_bytes(path.read_bytes()[:-1])
  config = tiny_config(**{'data.source': 'cifar10_binary', 'data.dir': str(folder),
                          'data.image_size': 32})
  result = run_cli(cli_args(config, tmp_path / 'w'))
  assert_one_line_error(result, message)


def test_evaluate_refuses_data_with_other_class_names(tmp_path, cifar_dir):
  folder, arrays = cifar_dir
  config = tiny_config(**{'data.source': 'cifar10_binary', 'data.dir': str(folder),
                          'data.image_size': 32, 'train.batch_size': 4,
                          'train.steps': 2, 'train.warmup_steps': 0,
                          'train.eval_every': 2, 'data.val_fraction': 0.3})
  train.train_and_evaluate(config, str(tmp_path / 'w'))
  (folder / 'batches.meta.txt').write_text(
      '\n'.join(f'other{k}' for k in range(10)) + '\n')
  result = run_cli(cli_args(config, tmp_path / 'w', '--mode=evaluate'))
  assert_one_line_error(result, "differ from those checkpoint 2 was trained on")


@pytest.mark.slow
def test_config_alone_trains_in_a_default_workdir_then_resumes_and_evaluates(
    tmp_path):
  """`--config=configs/NAME.py` alone: the workdir is runs/NAME (said on
  stderr), a rerun resumes there and --mode=evaluate reads it. The first line
  says what the run trains on; an installed GPU plugin (here a stand-in
  dist-info, which jax does not load) while JAX runs on the CPU warns."""
  plugin = tmp_path / 'site'
  info = plugin / 'jax_cuda12_plugin-9.9.9.dist-info'
  info.mkdir(parents=True)
  (info / 'METADATA').write_text(
      'Metadata-Version: 2.1\nName: jax-cuda12-plugin\nVersion: 9.9.9\n')
  env = {k: v for k, v in os.environ.items() if k != 'JAX_PLATFORMS'}
  env['PYTHONPATH'] = os.pathsep.join([str(plugin), REPO])
  args = cli_args(tiny_config(**{'train.steps': 2, 'train.eval_every': 2,
                                 'train.warmup_steps': 1}),
                  'unused')
  args.remove('--workdir=unused')
  run = lambda *extra, **kw: subprocess.run(
      args + list(extra), capture_output=True, text=True, cwd=tmp_path,
      timeout=600, env={**env, **kw})
  result = run()
  assert result.returncode == 0, result.stderr
  workdir = os.path.join('runs', 'resnet_conv')
  assert (f'workdir: {workdir} (from the config file\'s name'
          in result.stderr.splitlines()[0])
  first = result.stdout.splitlines()[0]
  assert re.fullmatch(r'training on 1 x cpu \(jax [0-9.a-z]+\), 1 process',
                      first), result.stdout
  assert jax.__version__ in first
  warnings = [l for l in result.stderr.splitlines() if 'GPU build' in l]
  assert warnings == [
      'warning: a GPU build of jax is installed (jax-cuda12-plugin) but JAX '
      'runs on the CPU; check `nvidia-smi` and the driver minimum in '
      'docs/gpus_and_clusters.md, and run with JAX_PLATFORMS=cuda to see why '
      'JAX found no GPU']
  assert os.listdir(tmp_path / workdir / 'checkpoints') == ['2']
  # Asked for the CPU: no warning. The same command resumes the run.
  result = run('--config.train.steps=4', JAX_PLATFORMS='cpu')
  assert result.returncode == 0, result.stderr
  assert 'GPU build' not in result.stderr
  assert 'Resuming from step 2 in' in result.stdout
  assert sorted(os.listdir(tmp_path / workdir / 'checkpoints')) == ['2', '4']
  result = run('--mode=evaluate', '--split=val', '--checkpoint=latest')
  assert result.returncode == 0, result.stderr
  assert json.loads(result.stdout.splitlines()[-1])['step'] == 4


def test_default_workdir_is_named_after_the_config_file():
  assert main.default_workdir('configs/resnet_conv_fast.py') == os.path.join(
      'runs', 'resnet_conv_fast')
  assert main.default_workdir('/x/y/cnn.py:arg') == os.path.join('runs', 'cnn')


@pytest.mark.parametrize('extra', [(), ('--config.train.steps=3',)])
def test_a_missing_config_file_is_one_line(tmp_path, extra):
  result = run_cli([*cli_args(tiny_config(), tmp_path / 'w')[:3],
                    '--config=configs/no_such.py', *extra])
  assert_one_line_error(result, '--config=configs/no_such.py: no such file')
  assert not (tmp_path / 'w').exists()
