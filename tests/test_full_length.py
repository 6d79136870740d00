"""bench/full_length.py, rehearsed on the CPU with --tiny: runs side by
side, each evaluated both ways, every figure with its command in the JSON;
runs stopped at the time limit are recorded as unfinished."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

SCRIPT = os.path.join(REPO, 'bench', 'full_length.py')
MODELS = ['resnet20_zeropad', 'resnet20_conv', 'cnn20']


def run_script(tmp_path, *args):
  out = tmp_path / 'full_length.json'
  result = subprocess.run(
      [sys.executable, SCRIPT, '--tiny', f'--workdir={tmp_path / "w"}',
       f'--out={out}', *args], cwd=REPO, capture_output=True, text=True,
      timeout=900)
  return result, json.loads(out.read_text())


@pytest.mark.slow
def test_runs_trained_side_by_side_and_evaluated_both_ways(tmp_path):
  # Two of the three (CI's time): side by side, as on a GPU.
  result, report = run_script(tmp_path, '--models=resnet20_conv,cnn20')
  assert result.returncode == 0, result.stderr[-3000:]
  assert list(report['runs']) == MODELS[1:]
  assert report['environment']['jax'] and report['recipe'] == '128'
  for name, run in report['runs'].items():
    assert run['finished'] and run['exit_code'] == 0 and run['last_step'] == 8
    assert f'--workdir={tmp_path / "w" / name}' in run['command']
    # The evaluation of the last checkpoint, single view, is the run's own
    # last validation (these configs validate single view).
    history = [json.loads(line) for line in
               (tmp_path / 'w' / name / 'metrics.jsonl').read_text().splitlines()]
    last = [r for r in history if 'val_accuracy' in r][-1]
    assert last['step'] == 8
    assert run['single_view']['accuracy'] == last['val_accuracy']
    assert run['last_val_accuracy'] == last['val_accuracy']
    for view, flip in (('single_view', False), ('flip_tta', True)):
      entry = run[view]
      assert 0 <= entry['accuracy'] <= 1 and entry['step'] == 8
      assert entry['examples'] == 32  # 20% of 160 synthetic images.
      assert f'--config.train.eval_flip={flip}' in entry['command']
    assert os.path.isdir(tmp_path / 'w' / name / 'checkpoints' / '8')


@pytest.mark.slow
def test_runs_past_the_limit_are_stopped_and_recorded(tmp_path):
  # Half a second: every run is stopped (SIGTERM) before its first step.
  result, report = run_script(tmp_path, '--limit=0.5', '--sequential')
  assert result.returncode == 1
  assert list(report['runs']) == MODELS
  for run in report['runs'].values():
    assert not run['finished'] and run['exit_code'] != 0
    assert run['last_step'] == 0 and run['last_val_accuracy'] is None
    # Nothing to evaluate: the evaluation's one-line error, no figures.
    assert 'accuracy' not in run['single_view']
    assert run['single_view']['error'].startswith('error: ')


def test_a_failed_evaluation_fails_the_script():
  sys.path.insert(0, os.path.dirname(SCRIPT))
  import full_length  # pylint: disable=import-outside-toplevel
  run = {'finished': True, 'single_view': {'accuracy': 0.9},
         'flip_tta': {'accuracy': 0.91}}
  assert full_length.succeeded({'runs': {'a': run}})
  failed = {**run, 'flip_tta': {'error': 'error: no checkpoint'}}
  assert not full_length.succeeded({'runs': {'a': run, 'b': failed}})
  assert not full_length.succeeded({'runs': {'a': {**run, 'finished': False}}})
