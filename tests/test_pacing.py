"""The host stays at most the pacer's depth of steps ahead of the devices
(pacing.default_depth(): 1 on the CPU, 2 on accelerators), a stop signal is
honoured within depth + 1 steps, and each logged interval's
images/s is the rate of its own steps wherever evaluations and saves fall."""
import functools
import json
import os
import re
import signal
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from resnet_jax import checkpoint, pacing, preemption, train


@functools.partial(jax.jit, static_argnums=1)
def slow(x, seconds):
  """x, after `seconds` of the devices' time: a device slower than its host."""
  wait = lambda x: (time.sleep(seconds), x)[1]
  return jax.pure_callback(wait, jax.ShapeDtypeStruct(x.shape, x.dtype), x)


@pytest.mark.parametrize('depth', [1, 2])
def test_pacer_keeps_at_most_depth_steps_queued_and_reports_them_in_order(
    depth):
  done = []
  pacer = pacing.Pacer(lambda step, seconds: done.append(step), depth=depth)
  outputs, x = [], jnp.zeros(())
  for step in range(1, 9):
    x = slow(x + 1, 0.02)
    outputs.append(x)
    pacer.dispatched(step, x)
    assert done == list(range(1, step - depth + 1))
    assert all(o.is_ready() for o in outputs[:step - depth])
  pacer.drain()
  assert done == list(range(1, 9)) and pacer.last_done == 8


def test_pacer_times_steps_from_the_step_before_and_skips_pauses():
  times = iter([10.0, 11.5, 50.0, 52.0, 53.0])
  seen = []
  pacer = pacing.Pacer(lambda step, s: seen.append((step, s)), depth=0,
                       clock=lambda: next(times))
  pacer.dispatched(1, jnp.zeros(()))  # Ends at 10: untimed (compilation).
  pacer.dispatched(2, jnp.zeros(()))  # 11.5
  pacer.paused()  # An evaluation until 50.
  pacer.dispatched(3, jnp.zeros(()))  # 52: 2 s after the pause.
  pacer.dispatched(4, jnp.zeros(()))  # 53
  assert seen == [(1, None), (2, 1.5), (3, 2.0), (4, 1.0)]


def records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_every_interval_rate_is_its_own_steps_rate_around_evaluations_and_saves(
    tmp_path, monkeypatch):
  """A clock that ticks one second at each step's end and jumps a minute in
  every evaluation and save: every interval must read batch_size images/s,
  including the ones around evaluations (every 7 steps, not a multiple of
  log_every 5), the one after a resume (at step 8), and the run's last."""
  clock = [0.0]

  def tick():
    clock[0] += 1.0
    return clock[0]

  monkeypatch.setattr(pacing, 'now', tick)
  make_inputs, save = train.make_inputs, checkpoint.save

  def make_inputs_with_slow_eval(*args, **kwargs):
    train_inputs, train_fn, run_eval = make_inputs(*args, **kwargs)

    def slow_eval(state):
      clock[0] += 60.0
      return run_eval(state)
    return train_inputs, train_fn, slow_eval

  def slow_save(*args, **kwargs):
    clock[0] += 60.0
    return save(*args, **kwargs)

  monkeypatch.setattr(train, 'make_inputs', make_inputs_with_slow_eval)
  monkeypatch.setattr(checkpoint, 'save', slow_save)
  config = tiny_config(**{'train.steps': 23, 'train.eval_every': 7,
                          'train.log_every': 5})
  workdir = str(tmp_path / 'w')
  train.train_and_evaluate(config, workdir, stop_at_step=8)
  train.train_and_evaluate(config, workdir)
  rates = {r['step']: r['images_per_sec'] for r in records(workdir)
           if 'images_per_sec' in r}
  assert sorted(rates) == [5, 8, 10, 15, 20, 23]
  assert all(rate == config.train.batch_size for rate in rates.values()), rates


def test_sigterm_stops_within_depth_plus_one_steps_of_a_slow_device(
    tmp_path, monkeypatch):
  """Each step takes 50 ms of the devices' time and the host dispatches in
  far less: without pacing the host would queue every step before the
  first log fetch. SIGTERM at step 12 saves step 12, with at most the
  pacer's depth of steps still queued when the signal came."""
  make_train_fn = train.make_train_fn
  queued_at_dispatch = []

  def make_slow_train_fn(*args, **kwargs):
    train_fn = make_train_fn(*args, **kwargs)
    outputs = []

    def slow_train_fn(state, inputs, active=None):
      queued_at_dispatch.append(sum(not o.is_ready() for o in outputs))
      if len(outputs) == 11:
        os.kill(os.getpid(), signal.SIGTERM)
      state, metrics = train_fn(state, inputs, active)
      metrics['active'] = slow(metrics['active'], 0.05)
      outputs.append(metrics['active'])
      return state, metrics
    return slow_train_fn

  monkeypatch.setattr(train, 'make_train_fn', make_slow_train_fn)
  config = tiny_config(**{'train.steps': 60, 'train.eval_every': 60,
                          'train.log_every': 20})
  with pytest.raises(preemption.Interrupted) as stopped:
    train.train_and_evaluate(config, str(tmp_path / 'w'))
  assert stopped.value.step == 12
  assert stopped.value.steps_after <= pacing.default_depth() + 1
  assert max(queued_at_dispatch) <= pacing.default_depth()
  manager = checkpoint.create_manager(str(tmp_path / 'w'))
  assert manager.latest_step() == 12
  manager.close()


@pytest.mark.slow
def test_two_processes_stop_at_the_same_step_when_one_gets_sigterm(tmp_path):
  """JAX's preemption service carries one process's SIGTERM to the other;
  both save the same step and exit with 128 + SIGTERM."""
  from test_multihost import free_port  # pylint: disable=import-outside-toplevel
  from test_reliability import wait_for_record  # pylint: disable=import-outside-toplevel
  from conftest import REPO, cli_args, fake_devices  # pylint: disable=import-outside-toplevel
  config = tiny_config(**{'train.steps': 100000, 'train.eval_every': 100000,
                          'train.log_every': 1})
  workdir, port = str(tmp_path / 'w'), free_port()
  procs = [subprocess.Popen(
      cli_args(config, workdir, f'--coordinator_address=localhost:{port}',
               '--num_processes=2', f'--process_id={i}'),
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env={**os.environ, **fake_devices(2)})
           for i in range(2)]
  try:
    wait_for_record(workdir, lambda r: r['step'] >= 5, procs[0], timeout=300)
    procs[1].send_signal(signal.SIGTERM)
    errors = [p.communicate(timeout=120)[1] for p in procs]
  finally:
    for p in procs:
      p.kill()
  steps = []
  for p, err in zip(procs, errors):
    assert p.returncode == 128 + signal.SIGTERM, err[-2000:]
    last = err.strip().splitlines()[-1]
    steps.append(int(re.match(r'stopped by SIGTERM at step (\d+)', last)[1]))
  assert steps[0] == steps[1]
  manager = checkpoint.create_manager(workdir)
  assert manager.latest_step() == steps[0]
  manager.close()


def test_preemption_query_falls_back_when_jax_internals_move(monkeypatch):
  """JAX has no public query for its preemption service: if the private one
  moves, SIGTERM is ours (agreed at log steps), not a crash at start-up."""
  from jax._src import distributed  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(distributed, 'global_state', object())
  assert preemption._preemption_service_on() is False
