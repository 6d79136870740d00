"""bench/cpu_convs.py on a small batch: a row per convolution shape and
XLA:CPU route, each pass timed, and the network's sum."""
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_cpu_convs_rows(tmp_path):
  out = tmp_path / 'convs.json'
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'bench', 'cpu_convs.py'),
       '--batch-size', '2', '--repeats', '1', '--no-torch', f'--json={out}'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = json.loads(out.read_text())['rows']
  # ResNet-20's six 3x3 shapes, its 19 convolutions, on both routes.
  assert [r['route'] for r in rows] == ['eigen', 'ynn'] * 6
  assert sum(r['count'] for r in rows) == 2 * 19
  for r in rows:
    assert set(r['jax_ms']) == {'fwd', 'dx', 'dw', 'dw_fast'}
    assert all(ms > 0 for ms in r['jax_ms'].values()) and r['gflop'] > 0
    assert r['jax_total_ms'] == (r['jax_ms']['fwd'] + r['jax_ms']['dx'] + min(
        r['jax_ms']['dw'], r['jax_ms']['dw_fast']))
  sums = re.search(r'eigen ([\d.]+), ynn ([\d.]+), torch nan', result.stdout)
  assert sums and float(sums[1]) > 0 and float(sums[2]) > 0
