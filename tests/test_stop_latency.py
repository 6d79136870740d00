"""bench/stop_latency.py on a tiny network: one trial's row holds the stop."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from resnet_jax import pacing


@pytest.mark.slow
def test_stop_latency_reports_a_stop_within_the_step_bound(tmp_path):
  out = tmp_path / 'stop.json'
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'bench', 'stop_latency.py'),
       '--trials=1', '--after=12', '--spread=0', f'--json={out}', '--',
       '--config.model.num_layers=1', '--config.data.image_size=16',
       '--config.data.synthetic_examples=512', '--config.train.batch_size=16'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout + result.stderr[-2000:]
  [row] = json.loads(out.read_text())['rows']
  assert row['returncode'] == 143 and row['stopped_at_step'] >= 1
  assert 0 <= row['steps_after_signal'] <= pacing.default_depth() + 1
  assert 0 < row['exit_s'] < 60
  assert '1 of 1 stopped by the signal' in result.stdout
