"""bench/gpu_throughput.py --augment: one row per augmentation setting, each
timing the step a run with that setting trains; on the CPU, the models and
convolutions of docs/results.md's CPU table, malloc tuned (its other modes:
the GPU check's throughput and members stages, tests/test_gpu_check.py)."""
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO

SCRIPT = os.path.join(REPO, 'bench', 'gpu_throughput.py')


def run_bench(*args):
  return subprocess.run([sys.executable, SCRIPT, '--models=resnet8',
                         '--batch-sizes=16', '--dtypes=float32', '--no-torch',
                         *args], cwd=REPO, capture_output=True, text=True,
                        timeout=900)


def test_an_unknown_augmentation_or_model_is_refused():
  result = run_bench('--augment=default,rotate')
  assert result.returncode == 2 and 'unknown rotate' in result.stderr
  result = run_bench('--models=resnet8,resnet21')
  assert result.returncode == 2 and '--models: unknown resnet21' in result.stderr


@pytest.mark.slow
def test_each_augmentation_setting_is_a_row_against_the_first(tmp_path):
  out = tmp_path / 'rows.json'
  result = run_bench('--augment=default,all', '--steps=3', '--warmup=1',
                     '--examples=256', '--repeats=2', f'--json={out}')
  assert result.returncode == 0, result.stderr[-3000:]
  rows = json.loads(out.read_text())['rows']
  assert [row['augment'] for row in rows] == ['default', 'all']
  assert all(row['jax_images_per_sec'] > 0 and row['step_ms'] > 0
             for row in rows)
  # The table sets each step against the first row's.
  table = [line for line in result.stdout.splitlines()
           if line.startswith('| resnet8')]
  assert len(table) == 2 and ' 1.00x ' in table[0]


@pytest.mark.slow
def test_cpu_models_are_a_row_each_with_malloc_tuned(
    tmp_path):
  out = tmp_path / 'rows.json'
  # XLA's convolutions: every other run in the suite takes the fast path.
  result = run_bench('--models=cnn20,resnet20-zeropad', '--batch-sizes=2',
                     '--conv_impl=xla', '--steps=2', '--warmup=0',
                     '--examples=16', '--tune-malloc', f'--json={out}')
  assert result.returncode == 0, result.stderr[-3000:]
  # The re-executed process saw glibc's malloc settings.
  assert 'malloc tuning (--tune-malloc): on' in result.stdout
  rows = json.loads(out.read_text())['rows']
  assert [(row['model'], row['conv_impl']) for row in rows] == [
      ('cnn20', 'xla'), ('resnet20-zeropad', 'xla')]
  assert all(row['jax_images_per_sec'] > 0 and row['jax_compile_s'] > 0
             for row in rows)
  # The header names the CPU: its family, model and vector width.
  assert re.search(r'family \d+ model \d+, (no )?AVX-512\)', result.stdout)
