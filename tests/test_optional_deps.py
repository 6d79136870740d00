"""Without tensorflow-datasets, grain, tensorboardX and matplotlib (a GPU image
may lack them) training and evaluation from cifar10_binary data still work,
and a mode that needs one of them names it in one line."""
import json
import sys

import pytest

from conftest import REPO, random_cifar, run_cli, write_cifar_bin

OPTIONAL = ('tensorflow_datasets', 'grain', 'tensorboardX', 'matplotlib')
# Runs resnet_jax.main with the optional packages unimportable.
WITHOUT = ('import runpy, sys\n'
           f'for name in {OPTIONAL!r}: sys.modules[name] = None\n'
           'sys.argv[0] = "resnet_jax.main"\n'
           'runpy.run_module("resnet_jax.main", run_name="__main__")\n')


def run_without_optional(data_dir, workdir, *extra):
  return run_cli([sys.executable, '-c', WITHOUT,
                  f'--config={REPO}/configs/resnet_conv.py',
                  f'--workdir={workdir}', '--config.data.source=cifar10_binary',
                  f'--config.data.dir={data_dir}', '--config.model.num_layers=1',
                  '--config.train.batch_size=16', '--config.train.steps=4',
                  '--config.train.warmup_steps=1', '--config.train.eval_every=4',
                  '--config.train.eval_batch_size=20', *extra])


@pytest.fixture
def data_dir(tmp_path):
  folder = tmp_path / 'cifar-10-batches-bin'
  folder.mkdir()
  for i in range(1, 6):
    write_cifar_bin(folder / f'data_batch_{i}.bin', *random_cifar(40, seed=i))
  return folder


@pytest.mark.slow
def test_trains_and_evaluates_without_optional_packages(data_dir, tmp_path):
  workdir = tmp_path / 'run'
  trained = run_without_optional(data_dir, workdir)
  assert trained.returncode == 0, trained.stderr
  assert (workdir / 'checkpoints' / '4').is_dir()
  assert (workdir / 'report.md').is_file()
  assert 'TensorBoard logging needs the package tensorboardX' in trained.stderr
  assert 'plots needs the package matplotlib' in trained.stderr
  evaluated = run_without_optional(data_dir, workdir, '--mode=evaluate',
                                   '--split=val', '--checkpoint=latest')
  assert evaluated.returncode == 0, evaluated.stderr
  result = json.loads(evaluated.stdout.strip().splitlines()[-1])
  assert 0 <= result['accuracy'] <= 1
  assert 'confusion matrix plot needs the package matplotlib' in evaluated.stderr

  for extra, message in [
      (('--mode=samples', '--split=val', '--checkpoint=latest'),
       'error: --mode=samples (its image grid) needs the package matplotlib'),
      (('--config.data.streaming=on', '--config.train.steps=8'),
       'error: data.streaming (reading a split from disk) needs the package '
       'grain'),
      (('--config.data.source=tfds',),
       'error: data.source=tfds needs the package tensorflow-datasets')]:
    refused = run_without_optional(data_dir, workdir, *extra)
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines
