"""Kills, preemption, corrupt checkpoints, divergence, restarts, determinism."""
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, cli_args, run_cli, tiny_config
from test_cli import assert_one_line_error, snapshot
from test_train import restore_params
from resnet_jax import models, pacing, reporting, train, train_state
from resnet_jax.workdir import LOCK_FILE


def start_cli(config, workdir, *extra):
  return subprocess.Popen(cli_args(config, workdir, *extra), cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def wait_for_record(workdir, predicate, proc, timeout=120):
  """Polls metrics.jsonl until a record satisfies `predicate`."""
  path = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.time() + timeout
  while time.time() < deadline:
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    if os.path.exists(path):
      for line in open(path).read().splitlines():
        if line.endswith('}') and predicate(json.loads(line)):
          return json.loads(line)
    time.sleep(0.05)
  raise TimeoutError(f'no matching record in {path}')


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_resume_continues_there(tmp_path):
  config = tiny_config(**{'train.steps': 100000, 'train.eval_every': 100000,
                          'train.log_every': 1})
  workdir = str(tmp_path / 'w')
  proc = start_cli(config, workdir)
  wait_for_record(workdir, lambda r: r['step'] >= 5, proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
  message = err.strip().splitlines()[-1]
  assert message.startswith('stopped by SIGTERM at step ')
  stopped_at, after = map(int, re.match(
      r'stopped by SIGTERM at step (\d+) \((\d+) after the signal\);',
      message).groups())
  assert after <= pacing.default_depth() + 1  # Steps the devices ran after it.
  assert restore_params(workdir)[0] == stopped_at >= 5
  result = run_cli(cli_args(config, workdir, f'--stop_at_step={stopped_at + 2}'))
  assert result.returncode == 0, result.stderr[-2000:]
  assert f'Resuming from step {stopped_at} ' in result.stdout
  assert restore_params(workdir)[0] == stopped_at + 2


@pytest.mark.slow
@pytest.mark.parametrize('damage', ['truncate_array_file', 'remove_metadata'])
def test_corrupt_checkpoint_is_skipped_on_resume_and_refused_by_evaluate(
    tmp_path, damage):
  config = tiny_config()
  workdir = str(tmp_path / 'w')
  train.train_and_evaluate(config, workdir, stop_at_step=6)
  kept = str(tmp_path / 'step6')
  shutil.copytree(os.path.join(workdir, 'checkpoints', '6'), kept)
  train.train_and_evaluate(config, workdir)
  if not os.path.exists(os.path.join(workdir, 'checkpoints', '6')):
    shutil.copytree(kept, os.path.join(workdir, 'checkpoints', '6'))
  step12 = os.path.join(workdir, 'checkpoints', '12')
  if damage == 'truncate_array_file':
    files = [f for f in glob.glob(f'{step12}/state/**/*', recursive=True)
             if os.path.isfile(f) and os.path.getsize(f) > 1000]
    for f in files:
      with open(f, 'r+b') as handle:
        handle.truncate(os.path.getsize(f) // 2)
  else:
    os.remove(os.path.join(step12, 'state', '_METADATA'))
  result = run_cli(cli_args(config, workdir, '--mode=evaluate', '--checkpoint=12',
                            '--split=val'))
  assert_one_line_error(result, 'checkpoint 12 in')
  assert 'unreadable' in result.stderr
  result = run_cli(cli_args(config, workdir))
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'warning: skipping checkpoint 12' in result.stderr
  assert 'Resuming from step 6 ' in result.stdout
  moved = glob.glob(os.path.join(workdir, 'corrupt_checkpoints', '12-*'))
  assert len(moved) == 1 and os.path.isdir(os.path.join(moved[0], 'state'))
  # Retrained from 6 to 12: the same parameters as the first time.
  straight = str(tmp_path / 'straight')
  train.train_and_evaluate(config, straight)
  jax.tree.map(np.testing.assert_array_equal, restore_params(workdir)[1],
               restore_params(straight)[1])


def test_non_finite_update_is_not_applied():
  """A step with a non-finite loss or gradient leaves the parameters, the
  optimizer state and the average of the weights (train.ema_decay) as they
  were, and counts the step."""
  config = tiny_config(**{'train.warmup_steps': 0, 'train.ema_decay': 0.9})
  mesh = train.create_mesh()
  model = models.from_config(config)
  # Member 0 of the stacked state: train_step is one member's step.
  state = jax.tree.map(lambda x: x[0],
                       train_state.create_train_state(config, model, mesh))
  poisoned = state.replace(params=jax.tree.map(lambda p: p, state.params))
  poisoned.params['Dense_0']['bias'] = poisoned.params['Dense_0']['bias'].at[0].set(jnp.nan)
  batch = {'image': jax.random.randint(jax.random.key(2), (4, 16, 16, 3), 0,
                                      256).astype(jnp.uint8),
           'label': jnp.zeros((4,), jnp.int32)}
  # Jitted: compiled once for both calls (op by op takes ~15 s on CPU).
  step = jax.jit(lambda s: train.train_step(
      s, batch, jax.random.key(1), normalization=([0.5] * 3, [0.25] * 3),
      label_smoothing=0.0, train_config=config.train))
  new, metrics = step(poisoned)
  assert not metrics['finite'] and int(new.step) == 1
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b),
               (new.params, new.opt_state, new.ema),
               (poisoned.params, poisoned.opt_state, poisoned.ema))
  new, metrics = step(state)
  assert metrics['finite']
  assert not np.array_equal(new.params['Dense_0']['kernel'],
                            state.params['Dense_0']['kernel'])
  assert not np.array_equal(new.ema['params']['Dense_0']['kernel'],
                            state.ema['params']['Dense_0']['kernel'])


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  workdir = tmp_path / 'w'
  train.train_and_evaluate(tiny_config(), str(workdir), stop_at_step=6)
  before = snapshot(workdir / 'checkpoints')
  exploding = tiny_config(**{'train.learning_rate': 1e4})
  result = run_cli(cli_args(exploding, workdir))
  assert_one_line_error(result, 'non-finite')
  assert 'at step ' in result.stderr
  assert 'the last good checkpoint is kept' in result.stderr
  assert snapshot(workdir / 'checkpoints') == before


def test_divergence_can_be_skipped(tmp_path):
  config = tiny_config(**{'train.learning_rate': 1e4,
                          'train.on_nonfinite': 'skip'})
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result['step'] == 12
  _, variables = restore_params(str(tmp_path))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(variables['params']))


@pytest.mark.slow
def test_restart_archives_the_previous_run(tmp_path):
  workdir = tmp_path / 'w'
  train.train_and_evaluate(tiny_config(), str(workdir))
  before = {os.path.relpath(p, workdir): v for p, v in snapshot(workdir).items()}
  del before[LOCK_FILE]  # The lock stays: the new run holds it.
  other = tiny_config(**{'model.shortcut': 'zeropad'})
  result = run_cli(cli_args(other, workdir, '--restart'))
  assert result.returncode == 0, result.stderr[-2000:]
  archive = glob.glob(str(workdir / 'archive-*'))
  assert len(archive) == 1
  assert (workdir / LOCK_FILE).exists()
  after = {os.path.relpath(p, archive[0]): v[0]
           for p, v in snapshot(archive[0]).items()}
  assert after == {k: v[0] for k, v in before.items()}  # Moved, unchanged.
  assert restore_params(str(workdir))[0] == 12


@pytest.mark.slow  # Whole runs: out of the edit loop, toward its 5 minutes.
def test_same_config_and_seed_give_identical_metrics(tmp_path):
  runs = []
  for name in ('a', 'b'):
    train.train_and_evaluate(tiny_config(), str(tmp_path / name))
    records = reporting.read_history(str(tmp_path / name))
    runs.append([{k: v for k, v in r.items() if k != 'images_per_sec'}
                 for r in records])
  assert runs[0] == runs[1]
  other = tiny_config(seed=1)
  train.train_and_evaluate(other, str(tmp_path / 'c'))
  assert reporting.read_history(str(tmp_path / 'c'))[0]['train_loss'] != runs[0][0]['train_loss']
