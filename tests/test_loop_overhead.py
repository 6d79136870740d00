"""bench/loop_overhead.py runs the real loop, so a refactor of train.py that
breaks it fails here (one already did: it patched a function that was gone)."""
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_loop_overhead_times_the_real_loop():
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'bench', 'loop_overhead.py'),
       '--model', 'resnet20', '--examples', '64', '--steps', '4',
       '--log_every', '2', '--repeats', '1'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr
  assert 'model resnet20, 8x8 images, batch 8' in result.stdout
  # A figure from 4 steps is noise (even negative): only its row is checked.
  rows = re.findall(r'log_every=\s*2 examples=\s*(\d+):\s+(-?\d+) steps/s',
                    result.stdout)
  assert [int(n) for n, _ in rows] == [64]
