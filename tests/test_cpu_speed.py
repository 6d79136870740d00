"""bench/cpu_speed.py on a small batch: one row per model, positive
images/s for the fast path and XLA's convolutions, the compile apart."""
import json
import os
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
