"""bench/cpu_speed.py on a small batch: the whole step (one row per model,
positive images/s for the fast path and XLA's convolutions, the compile
apart), and --convs (a row per convolution shape and XLA:CPU route, each
pass timed, and the network's sums)."""
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO


def cpu_speed(out, *args):
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'bench', 'cpu_speed.py'),
       '--batch-size', '2', '--no-torch', f'--json={out}', *args],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout, json.loads(out.read_text())['rows']


@pytest.mark.slow
def test_cpu_speed_rows(tmp_path):
  stdout, [row] = cpu_speed(tmp_path / 'speed.json', '--models', 'cnn20',
                            '--steps', '2', '--warmup', '0')
  assert row['model'] == 'cnn20'
  assert row['fast'] > 0 and row['xla'] > 0
  assert row['fast_compile'] > 0 and row['xla_compile'] > 0
  assert 'torch' not in row
  assert '| cnn20 | ' in stdout and 'AVX-512' in stdout


@pytest.mark.slow
def test_cpu_speed_convs_rows(tmp_path):
  stdout, rows = cpu_speed(tmp_path / 'convs.json', '--convs', '--repeats',
                           '1')
  # ResNet-20's six 3x3 shapes, its 19 convolutions, on both routes.
  assert [r['route'] for r in rows] == ['eigen', 'ynn'] * 6
  assert sum(r['count'] for r in rows) == 2 * 19
  for r in rows:
    assert set(r['jax_ms']) == {'fwd', 'dx', 'dw', 'dw_fast'}
    assert all(ms > 0 for ms in r['jax_ms'].values()) and r['gflop'] > 0
    assert r['jax_total_ms'] == (r['jax_ms']['fwd'] + r['jax_ms']['dx'] + min(
        r['jax_ms']['dw'], r['jax_ms']['dw_fast']))
  sums = re.search(r'eigen ([\d.]+), ynn ([\d.]+), torch nan', stdout)
  assert sums and float(sums[1]) > 0 and float(sums[2]) > 0
