"""bench/cpu_speed.py on a small batch: one row per model with positive
images/s for the fast path and XLA's convolutions, and the compile apart."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_cpu_speed_rows(tmp_path):
  out = tmp_path / 'speed.json'
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'bench', 'cpu_speed.py'),
       '--models', 'cnn20', '--batch-size', '4', '--steps', '2', '--warmup',
       '0', '--no-torch', f'--json={out}'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  [row] = json.loads(out.read_text())['rows']
  assert row['model'] == 'cnn20'
  assert row['fast'] > 0 and row['xla'] > 0
  assert row['fast_compile'] > 0 and row['xla_compile'] > 0
  assert 'torch_cl' not in row and 0 <= row['other_load'] <= 100
  assert '| cnn20 | ' in result.stdout and 'AVX-512' in result.stdout
