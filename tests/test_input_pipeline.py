"""bench/input_pipeline.py on a few generated images: every source's row,
loaded and streamed, the on-device batch and the train step, with rates."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_input_pipeline_rows(tmp_path):
  out = tmp_path / 'pipeline.json'
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'bench', 'input_pipeline.py'),
       '--folder_images=20', '--synthetic_images=64', '--batch_size=4',
       '--train_steps=2', '--pipeline_steps=2', '--stream_steps=2',
       f'--cifar_dir={tmp_path / "absent"}', f'--json={out}'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = {r['what']: r for r in json.loads(out.read_text())['rows']}
  assert rows['cifar10_binary']['images_per_sec'] is None  # Absent here.
  # tfds measured where tensorflow-datasets is installed (a core dependency).
  measured = [r for what, r in rows.items() if what != 'cifar10_binary']
  assert len(measured) == 11, list(rows)
  assert all(r['images_per_sec'] > 0 for r in measured)
  # Loads and streams in epochs of training; the step rows themselves not.
  for what, r in rows.items():
    on_device = what.startswith(('on-device', 'ResNet-20'))
    assert (r['epochs'] is None) == (on_device or not r['images_per_sec'])
