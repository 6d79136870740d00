"""docs/getting_started.md run as written, in order, on a fresh clone: every
command of its shell blocks, the training and evaluation ones shortened to a
few steps by overrides appended to them (as tests/test_extending.py runs its
guide's code), with a fresh HOME and CIFAR-10 served from 127.0.0.1 through
the documented mirror variables. Only setting up the environment and the
test suite itself are not run; anything else the guide adds must be taught
to this test."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from test_docs import fenced_blocks, main_args, read, shell_commands
from test_download import SHORTER, fresh_user_env, lone_clone
from test_download import server  # pylint: disable=unused-import  # A fixture.

GUIDE = os.path.join(REPO, 'docs', 'getting_started.md')
TINY = SHORTER + ['--config.model.num_layers=1']
NOT_RUN = {  # The guide's commands this test does not run, and why.
    ('python3', '-m', 'venv'): 'sets up the environment this test runs in',
    ('.venv/bin/pip', 'install'): 'installs what this test runs with',
    ('.venv/bin/python', '-m', 'pytest'): 'the test suite itself',
}


def guide_commands():
  """Every command of the guide's shell blocks, in order."""
  return [argv for _, block in fenced_blocks(read(GUIDE))
          for _, argv in shell_commands(block)]


def not_run(argv):
  return next((why for start, why in NOT_RUN.items()
               if tuple(argv[:len(start)]) == start), None)


def test_the_guide_has_the_commands_this_test_expects():
  kinds = [('skip' if not_run(argv) else argv[0] if argv[0] == 'export'
            else ' '.join(argv[1:3])) for argv in guide_commands()]
  assert kinds.count('-m resnet_jax.main') >= 3, kinds
  assert '-m resnet_jax.compare' in kinds and 'export' in kinds, kinds


@pytest.mark.slow
def test_every_command_runs_in_order_on_a_fresh_clone(server, tmp_path):
  clone = lone_clone(tmp_path)
  env = fresh_user_env(tmp_path / 'home', **{
      k: v for k, v in server['env'].items() if k != 'RESNET_JAX_DATA'})
  outputs = []
  for argv in guide_commands():
    if not_run(argv):
      continue
    if argv[0] == 'export':  # Into the environment of what follows.
      env.update(word.split('=', 1) for word in argv[1:])
      continue
    assert argv[0] == '.venv/bin/python', f'teach this test: {argv}'
    command = [sys.executable, *argv[1:]]
    if main_args(argv) is not None:
      command += TINY
    result = subprocess.run(command, cwd=clone, capture_output=True,
                            text=True, timeout=600, env=env)
    assert result.returncode == 0, f'{argv}\n{result.stderr[-3000:]}'
    outputs.append((argv, result))
  runs = clone / 'runs'
  # The first training run: its default workdir, what it trains on, the
  # download (once), and what "Where to look" names.
  argv, result = outputs[0]
  assert main_args(argv) == ['--config=configs/resnet_conv_fast.py']
  assert result.stdout.startswith('training on 1 x cpu (jax ')
  assert 'workdir: runs/resnet_conv_fast ' in result.stderr
  for name in ('report.md', 'plots/accuracy.png', 'tensorboard'):
    assert os.path.exists(runs / 'resnet_conv_fast' / name), name
  assert server['state']['requests'] == 1
  evaluated = [r for a, r in outputs if '--mode=evaluate' in a]
  report = json.loads(evaluated[0].stdout.strip().splitlines()[-1])
  assert report['split'] == 'test' and report['num_examples'] == 10
  assert os.path.isfile(runs / 'compare.png')
  assert os.path.isfile(runs / 'compare.md')
