"""bench/time_to_accuracy.py on a tiny run: the first evaluation at the
target is reported with its time from the process start, and a target
never reached exits 1."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, 'bench'))
from gpu_check import TINY_DATA  # pylint: disable=wrong-import-position


def time_to(target, workdir):
  return subprocess.run(
      [sys.executable, os.path.join(REPO, 'bench', 'time_to_accuracy.py'),
       f'--target={target}', f'--workdir={workdir}', '--',
       '--config=configs/resnet_conv.py', *TINY_DATA,
       '--config.train.steps=4', '--config.train.eval_every=2',
       '--config.train.warmup_steps=1'],
      cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_time_to_a_target_reached_and_one_never_reached(tmp_path):
  result = time_to(0.0, tmp_path / 'reached')
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report['reached'] and report['step'] == 2  # The first evaluation.
  assert 0 < report['seconds_from_start'] and report['val_accuracy'] >= 0
  result = time_to(1.01, tmp_path / 'never')
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert result.returncode == 1 and not report['reached']
  assert report['exit_code'] == 0 and report['wall_time_s'] > 0
