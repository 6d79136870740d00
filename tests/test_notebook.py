"""notebooks/quickstart.ipynb runs top to bottom on the CPU (nbclient, a
kernel of this interpreter) on the real CIFAR-10 beside the repo, so it
cannot rot; its saved copy keeps outputs and stays small."""
import json
import os
import re
import sys

import nbclient
import nbformat
import pytest

from conftest import REAL_DATA, REPO, require_real_data

NOTEBOOK = os.path.join(REPO, 'notebooks', 'quickstart.ipynb')
KERNEL = 'resnet_jax_test'


def kernel_of_this_interpreter(folder) -> str:
  """A kernelspec in `folder` (for JUPYTER_PATH) that runs sys.executable,
  whatever `python` or a user's 'python3' kernel would be."""
  spec = folder / 'kernels' / KERNEL
  spec.mkdir(parents=True)
  (spec / 'kernel.json').write_text(json.dumps({
      'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f',
               '{connection_file}'],
      'display_name': 'resnet_jax tests', 'language': 'python'}))
  return str(folder)


def outputs(cell) -> str:
  return ''.join(o.get('text', '') + json.dumps(o.get('data', {}).get(
      'text/plain', '')) for o in cell.outputs)


@pytest.mark.slow
def test_quickstart_runs_top_to_bottom(tmp_path, monkeypatch):
  require_real_data()
  monkeypatch.setenv('JUPYTER_PATH', kernel_of_this_interpreter(tmp_path))
  monkeypatch.setenv('RESNET_JAX_CIFAR10_DIR', REAL_DATA)
  monkeypatch.delenv('MPLBACKEND', raising=False)  # Inline figures.
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbclient.NotebookClient(
      notebook, kernel_name=KERNEL, timeout=300,
      resources={'metadata': {'path': os.path.dirname(NOTEBOOK)}}).execute()
  code = [c for c in notebook.cells if c.cell_type == 'code']
  text = '\n'.join(outputs(c) for c in code)
  accuracy = float(re.search(r'accuracy on 1000 validation images: (\S+)',
                             text)[1])
  assert accuracy >= 0.88  # The shipped ResNet-20 (chance: 0.1).
  assert "'step': 20" in text  # The tiny run finished.
  pictures = [o for c in code for o in c.outputs
              if 'image/png' in o.get('data', {})]
  assert len(pictures) == 3  # Top-3 labels, confusion matrix, curve.


def test_saved_notebook_keeps_its_outputs_and_stays_small():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  code = [c for c in notebook.cells if c.cell_type == 'code']
  assert all(c.execution_count for c in code)  # Executed, in order.
  assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
  assert sum('image/png' in o.get('data', {}) for c in code
             for o in c.outputs) == 3
  assert not any(o.get('output_type') == 'error' for c in code
                 for o in c.outputs)
  assert os.path.getsize(NOTEBOOK) < 500_000
