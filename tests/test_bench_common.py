"""bench/common.py, what every benchmark shares: the timing loop keeps the
first call apart and times only the steps, rows reach their file as they
come, list arguments parse, the environment names the CPU."""
import json
import os
import sys
import time

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, 'bench'))
import common  # pylint: disable=wrong-import-position


def test_time_loop_times_the_steps_alone_after_the_first_call():
  calls, synced = [], []

  def step(carry):
    time.sleep(0.05 if not calls else 0.01)  # The first call "compiles".
    calls.append(carry)
    return carry + 1

  def sync(carry):
    synced.append(carry)
    return carry

  first, windows, last = common.time_loop(step, 0, steps=3, warmup=2,
                                          repeats=2, sync=sync)
  assert calls == list(range(1 + 2 + 2 * 3)) and last == 9
  # Synced after the first call, after the warmup, and closing each window.
  assert synced == [1, 3, 6, 9]
  assert first >= 0.05 and len(windows) == 2
  assert all(0.01 <= s < 0.05 for s in windows), windows


def test_rows_are_rewritten_whole_after_each_row(tmp_path):
  path = tmp_path / 'sub' / 'rows.json'
  rows = common.Rows(str(path), command='x')
  rows.add({'a': 1})
  assert json.loads(path.read_text()) == {'command': 'x', 'rows': [{'a': 1}]}
  rows.add({'a': 2})
  assert json.loads(path.read_text())['rows'] == [{'a': 1}, {'a': 2}]
  assert rows == [{'a': 1}, {'a': 2}]
  common.Rows(None).add({'a': 3})  # No path: nothing written, no error.


def test_lists_tables_and_the_environment():
  assert common.ints('1,8,32') == [1, 8, 32]
  assert common.names('resnet20,resnet56,') == ['resnet20', 'resnet56']
  assert common.table('a', 2) == '| a | 2 |'
  assert common.table('---', 3) == '| --- | --- | --- |'
  assert common.last_json('noise\n{"a": 1}\n') == {'a': 1}
  env = common.environment_in_child()
  assert env['jax'] and env['flax'] and env['device'] and env['cores'] >= 1
  with open('/proc/cpuinfo') as f:
    avx512 = 'avx512f' in f.read().split()
  assert env['cpu'].endswith(', AVX-512)' if avx512 else ', no AVX-512)')
  assert env['cpu'] in common.header(env)
