"""What a workdir's checkpoints folder keeps (resnet_jax/checkpoint.py).

The guarantee: after any save returns, the folder holds the latest step, a
step with the best mean validation accuracy and one with the lowest mean
validation loss among every evaluated save ever made there, by any process,
unless a newer save beat them; every step it holds restores. Checked after
every action of seeded random sequences: evaluated saves, saves without an
evaluation, reopening the manager (what a new process does), a save killed
half-way (its temporary folder left behind) and a corrupted newest step (the
trainer's resume moves it aside). No training: the state is a few arrays.
"""
import glob
import os
import random
import shutil
import signal
import subprocess
import types

import jax.numpy as jnp
import pytest

from conftest import REPO, cli_args, run_cli, snapshot, tiny_config
from test_reliability import start_cli, wait_for_record
from test_train import restore_params
from resnet_jax import checkpoint, reporting, train

CONFIG = tiny_config()
META = {'architecture': checkpoint.architecture(CONFIG), 'members': []}


def state_at(step):
  return {'w': jnp.full((64, 64), step, jnp.float32),
          'b': jnp.arange(8, dtype=jnp.float32) + step}


class Reference:
  """The steps the guarantee says must be on disk."""

  def __init__(self):
    self.evaluated = {}  # step -> (accuracy, loss), of saves ever made.
    self.latest = None

  def save(self, step, metrics):
    self.latest = step
    # A step saved again (after a resume from an earlier one) replaces it.
    self.evaluated.pop(step, None)
    self.evaluated = {s: m for s, m in self.evaluated.items() if s < step}
    if metrics:
      self.evaluated[step] = (metrics['val_accuracy'], metrics['val_loss'])

  def check(self, on_disk):
    assert self.latest in on_disk, (self.latest, on_disk)
    if self.evaluated:
      best = max(a for a, _ in self.evaluated.values())
      lowest = min(l for _, l in self.evaluated.values())
      assert any(s in on_disk for s, (a, _) in self.evaluated.items()
                 if a == best), ('best accuracy', self.evaluated, on_disk)
      assert any(s in on_disk for s, (_, l) in self.evaluated.items()
                 if l == lowest), ('lowest loss', self.evaluated, on_disk)


def on_disk_steps(workdir):
  manager = checkpoint.create_manager(workdir, read_only=True)
  steps = set(manager.all_steps())
  for step in steps:  # Every step held restores.
    restored = checkpoint.restore_state(manager, step, state_at(0))
    assert float(restored['b'][0]) == step
  manager.close()
  return steps


@pytest.mark.parametrize('seed', range(4))
def test_latest_and_bests_survive_random_saves_reopens_and_kills(tmp_path,
                                                                 seed):
  rng = random.Random(seed)
  workdir = str(tmp_path / 'w')
  manager = checkpoint.create_manager(workdir)
  reference, step = Reference(), 0
  actions = []
  for _ in range(40):
    action = rng.choices(
        ['evaluated', 'unevaluated', 'reopen', 'killed_save', 'corrupt'],
        [6, 2, 2, 1, 1])[0]
    actions.append(action)
    if action in ('evaluated', 'unevaluated'):
      step += rng.randint(1, 3)
      # Coarse values, so that ties happen.
      metrics = ({'val_accuracy': rng.randint(0, 8) / 8,
                  'val_loss': rng.randint(1, 8) / 4}
                 if action == 'evaluated' else None)
      checkpoint.save(manager, step, state_at(step), META, metrics)
      manager.wait_until_finished()
      reference.save(step, metrics)
    elif action == 'reopen':
      manager.close()
      manager = checkpoint.create_manager(workdir)
    elif action == 'killed_save' and manager.all_steps():
      # The temporary folder of a save cut short.
      newest = max(manager.all_steps())
      partial = os.path.join(checkpoint.checkpoint_dir(workdir),
                             f'{step + 1}.orbax-checkpoint-tmp-{len(actions)}')
      shutil.copytree(os.path.join(checkpoint.checkpoint_dir(workdir),
                                   str(newest)), partial)
      for f in glob.glob(f'{partial}/state/**/*', recursive=True):
        if os.path.isfile(f):
          os.truncate(f, 0)
      manager.close()
      manager = checkpoint.create_manager(workdir)
    elif action == 'corrupt' and len(manager.all_steps()) > 1:
      newest = max(manager.all_steps())
      for f in glob.glob(f'{manager.directory}/{newest}/state/**/*',
                         recursive=True):
        if os.path.isfile(f) and os.path.getsize(f) > 100:
          os.truncate(f, os.path.getsize(f) // 2)
      manager.close()
      manager = checkpoint.create_manager(workdir)
      # What a resume does: the newest intact step, the corrupt one moved.
      resumed = checkpoint.newest_intact(
          manager, workdir, lambda m, s: checkpoint.restore_state(
              m, s, state_at(0)))
      assert resumed is not None and resumed[0] < newest
      assert glob.glob(f'{workdir}/corrupt_checkpoints/{newest}-*')
      # The guarantee held before the damage; what the corrupt step beat
      # is gone by design, so the reference restarts from what is left.
      step = resumed[0]
      held = on_disk_steps(workdir)
      reference.evaluated = {s: m for s, m in reference.evaluated.items()
                             if s in held}
      reference.latest = step
    if reference.latest is not None:
      reference.check(on_disk_steps(workdir))
  manager.close()
  assert 'evaluated' in actions


def test_a_save_error_names_the_operating_systems_reason(tmp_path):
  """A long TensorStore message ends with the error's number alone; the one
  line names it (EFBIG: 'File too large') however it is shortened."""
  manager = types.SimpleNamespace(directory=str(tmp_path))
  os.makedirs(tmp_path / '6')
  for text in ("writing 'f': File too large " + 'x' * 400 + " [os_error_code='27']",
               'x' * 400 + " [os_error_code='27']"):
    message = str(checkpoint._save_failed(manager, ValueError(text)))  # pylint: disable=protected-access
    assert 'File too large' in message and 'steps: [6])' in message
    assert len(message.splitlines()) == 1
  error = OSError(28, 'No space left on device')
  assert str(checkpoint._save_failed(manager, error)).count(  # pylint: disable=protected-access
      'No space left on device') == 1


@pytest.mark.slow
def test_a_failed_save_is_one_line_and_keeps_the_earlier_checkpoints(tmp_path):
  config = tiny_config()
  workdir = str(tmp_path / 'w')
  train.train_and_evaluate(config, workdir, stop_at_step=6)
  step6 = os.path.join(workdir, 'checkpoints', '6')
  before = snapshot(step6)
  # A 64 KiB file size limit: the next checkpoint's arrays cannot be written
  # (EFBIG; Python ignores SIGXFSZ), as on a full disk or quota.
  limit = 64 * 1024
  result = subprocess.run(
      ['bash', '-c', f'ulimit -f {limit // 1024} && exec "$@"', 'bash',
       *cli_args(config, workdir)], cwd=REPO, capture_output=True, text=True,
      timeout=300, env={**os.environ, 'JAX_ENABLE_COMPILATION_CACHE': 'false'})
  # It ends with one error line, the cause in it. (TensorStore's pending
  # writes may print 'Event loop is closed' tracebacks before it, from
  # threads that no hook reaches.)
  assert result.returncode == 2, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: saving a checkpoint in '), result.stderr
  assert 'File too large' in last and 'steps: [6])' in last
  assert result.stderr.count('error: ') == 1
  assert snapshot(step6) == before
  assert restore_params(workdir)[0] == 6
  result = run_cli(cli_args(config, workdir))
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'Resuming from step 6 ' in result.stdout
  assert restore_params(workdir)[0] == 12


@pytest.mark.slow
def test_best_survives_sigterm_then_a_worse_resume(tmp_path):
  """The trainer end to end: stopped by SIGTERM between evaluations, resumed
  with a learning rate that wrecks the net. The folder then holds a step of
  the best accuracy and one of the lowest loss among every evaluation of
  both processes (metrics.jsonl), and the stopped run's best if no later
  evaluation beat it."""
  steps = {'train.steps': 40, 'train.eval_every': 4}
  config = tiny_config(**steps, **{'train.log_every': 1})
  workdir = str(tmp_path / 'w')
  proc = start_cli(config, workdir)
  wait_for_record(workdir, lambda r: 'train_loss' in r and r['step'] >= 9, proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
  stopped = int(err.strip().splitlines()[-1].split('at step ')[1].split()[0])
  assert 9 <= stopped < 40
  manager = checkpoint.create_manager(workdir, read_only=True)
  first_best = checkpoint.select_step(manager, 'best')
  manager.close()
  worse = tiny_config(**steps, **{'train.learning_rate': 50.0,
                                  'train.on_nonfinite': 'skip'})
  train.train_and_evaluate(worse, workdir)
  evaluated = {r['step']: (r['val_accuracy'], r['val_loss'])
               for r in reporting.read_history(workdir) if 'val_accuracy' in r}
  assert set(evaluated) == set(range(4, 41, 4))  # Both processes' records.
  manager = checkpoint.create_manager(workdir, read_only=True)
  held = set(manager.all_steps())
  assert 40 in held
  best = max(a for a, _ in evaluated.values())
  lowest = min(l for _, l in evaluated.values())
  assert evaluated[checkpoint.select_step(manager, 'best')][0] == best
  assert evaluated[checkpoint.select_step(manager, 'best_loss')][1] == lowest
  if all(a < evaluated[first_best][0] for s, (a, _) in evaluated.items()
         if s > stopped):
    assert checkpoint.select_step(manager, 'best') == first_best
