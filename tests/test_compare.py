"""resnet_jax.compare and launch/depth_sweep.sh: one tiny real sweep (a plain
and a residual 8-layer net, 2 steps each, on synthetic data) shared by the
tests, then its table, plot, skipping, dry runs and bad input."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import FAST_COMPILE, fast_compile_applies, snapshot
from resnet_jax import compare, report, reporting

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = os.path.join(REPO, 'launch', 'depth_sweep.sh')
TINY = ('--steps=2', '--config.data.source=synthetic',
        '--config.data.image_size=8', '--config.data.synthetic_examples=32',
        '--config.data.val_fraction=0.25', '--config.train.batch_size=8',
        '--config.train.warmup_steps=0', '--config.train.eval_every=1',
        '--config.train.log_every=1', '--config.train.eval_batch_size=8')
WORKDIRS = ('plain-8', 'resnet_zeropad-8')


def sweep(*args, python=sys.executable):
  env = {k: v for k, v in os.environ.items()
         if k not in ('DRY_RUN', 'CUDA_VISIBLE_DEVICES', 'XLA_FLAGS')}
  env.update(PYTHON=python,
             XLA_FLAGS=FAST_COMPILE if fast_compile_applies() else '')
  return subprocess.run([SWEEP, *args], capture_output=True, text=True,
                        cwd=REPO, env=env, timeout=300)


def assert_one_line_error(result, pattern):
  assert result.returncode == 2, result.stdout + result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and 'error: ' in lines[0], result.stderr
  assert pattern in lines[0], lines[0]


def read_table(text):
  """A markdown table as a list of {column: cell}."""
  rows = [l.strip().strip('|').split('|') for l in text.splitlines()
          if l.startswith('|')]
  header = [c.strip() for c in rows[0]]
  return [dict(zip(header, (c.strip() for c in row))) for row in rows[2:]]


@pytest.fixture(scope='module')
def swept(tmp_path_factory):
  """ROOT of a finished tiny sweep at depth 8, and the sweep's result."""
  root = tmp_path_factory.mktemp('sweep') / 'root'
  result = sweep(f'--root={root}', '--depths=8', *TINY)
  assert result.returncode == 0, result.stderr
  return root, result


@pytest.mark.slow
def test_sweep_trains_both_families_then_compares(swept):
  root, result = swept
  for name in WORKDIRS:
    assert (root / name / 'report.md').exists()
    assert reporting.read_history(str(root / name))[-1]['step'] == 2
  logged = result.stderr.splitlines()
  assert any('configs/cnn.py --workdir=' + str(root / 'plain-8') in l
             for l in logged)
  assert any('configs/resnet_zeropad.py' in l and 'num_layers=1' in l
             for l in logged)
  rows = read_table((root / 'depth_sweep.md').read_text())
  assert [(r['run'], r['family'], r['depth']) for r in rows] == [
      ('plain-8', 'plain', '8'), ('resnet-8', 'ResNet (zeropad)', '8')]
  assert result.stdout.endswith((root / 'depth_sweep.md').read_text())
  with Image.open(root / 'depth_sweep.png') as image:
    # One 6.4 x 4.4 inch panel per family at 100 dpi.
    assert image.format == 'PNG' and image.size == (1280, 440)
    assert np.asarray(image.convert('L')).std() > 10  # Not a blank canvas.


@pytest.mark.slow
def test_table_figures_are_the_runs_figures(swept):
  root, _ = swept
  rows = read_table((root / 'depth_sweep.md').read_text())
  for row, name in zip(rows, WORKDIRS):
    workdir = str(root / name)
    history = reporting.read_history(workdir)
    best = report.best_validation(history)
    evals = [r for r in history if 'val_accuracy' in r]
    trains = [r for r in history if 'train_accuracy' in r]
    report_rows = compare.read_report(workdir)
    assert row['best val accuracy'] == f'{best["val_accuracy"]:.4f}'
    assert row['best at step'] == str(best['step'])
    assert row['final val accuracy'] == f'{evals[-1]["val_accuracy"]:.4f}'
    assert row['final train error'] == (
        f'{1 - trains[-1]["train_accuracy"]:.4f}')
    assert row['steps'] == '2' and row['epochs'] == f'{2 / 3:.1f}'
    assert row['parameters'] == report_rows['parameters']
    seconds = float(report_rows['wall time'].split()[0])
    assert row['wall time'] == f'{seconds / 60:.1f} min'
    rates = [r['images_per_sec'] for r in trains if r['images_per_sec']]
    assert row['images/s'] == f'{np.median(rates):.0f}'


@pytest.mark.slow
def test_a_run_in_progress_is_counted_from_its_config(swept, tmp_path):
  """No report.md yet: parameters from config.json, steps 'N of M'."""
  root, _ = swept
  workdir = tmp_path / 'resnet-8'
  shutil.copytree(root / 'resnet_zeropad-8', workdir)
  os.remove(workdir / 'report.md')
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  (workdir / 'metrics.jsonl').write_text('\n'.join(lines[:2]) + '\n')
  run = compare.load_run(str(workdir))
  run.label = 'x'
  row = dict(zip(compare.COLUMNS, compare.table_row(run)))
  finished = read_table((root / 'depth_sweep.md').read_text())[1]
  assert row['parameters'] == finished['parameters']
  assert row['steps'] == '1 of 2' and row['wall time'] == 'n/a'


@pytest.mark.slow
def test_second_sweep_skips_complete_runs(swept):
  root, _ = swept
  before = {name: snapshot(root / name) for name in WORKDIRS}
  table = (root / 'depth_sweep.md').read_text()
  result = sweep(f'--root={root}', '--depths=8', *TINY)
  assert result.returncode == 0, result.stderr
  for name in WORKDIRS:
    assert f'# {root / name} is complete: skipped' in result.stderr
    assert snapshot(root / name) == before[name]
  assert 'resnet_jax.main' not in result.stderr
  assert result.stdout == table
  # A larger budget or a new depth: those runs are (re)started, not skipped.
  result = sweep('--dry-run', f'--root={root}', '--depths=8,14', *TINY)
  lines = result.stdout.splitlines()
  assert [l for l in lines if l.startswith('#')] == [
      f'# {root / name} is complete: skipped' for name in WORKDIRS]
  assert sum('resnet_jax.main' in l and 'num_layers=2' in l
             for l in lines) == 2
  result = sweep('--dry-run', f'--root={root}', '--depths=8', *TINY,
                 '--steps=3')
  assert sum('resnet_jax.main' in l for l in result.stdout.splitlines()) == 2


def test_dry_run_prints_the_commands_and_runs_nothing(tmp_path):
  marker = tmp_path / 'ran'
  fake = tmp_path / 'python'
  fake.write_text(f'#!/bin/sh\ntouch {marker}\n')
  fake.chmod(0o755)
  root = tmp_path / 'root'
  result = sweep('--dry-run', f'--root={root}', '--depths=20,56',
                 '--shortcut=conv', '--steps=100', '--config.data.dir=/d',
                 python=str(fake))
  assert result.returncode == 0, result.stderr
  commands = [l for l in result.stdout.splitlines()
              if not l.startswith('export ')]
  assert commands == [
      f'{fake} -m resnet_jax.main --config=configs/{config}.py '
      f'--workdir={root}/{family}-{depth} --mode=train '
      f'--config.model.num_layers={n} --config.train.steps=100 '
      '--config.data.dir=/d'
      for depth, n in ((20, 3), (56, 9))
      for config, family in (('cnn', 'plain'), ('resnet_conv', 'resnet_conv'))
  ] + [f'{fake} -m resnet_jax.compare {root}/plain-20 {root}/plain-56 '
       f'{root}/resnet_conv-20 {root}/resnet_conv-56 '
       f'--out={root}/depth_sweep.png --table={root}/depth_sweep.md']
  assert not marker.exists() and not root.exists()
  check = subprocess.run(['bash', '-n'], input=result.stdout, text=True)
  assert check.returncode == 0
  # The paper's defaults: zero-padding shortcuts, depths 20 to 56.
  result = sweep('--dry-run', f'--root={root}', python=str(fake))
  assert [l.split()[4] for l in result.stdout.splitlines()
          if 'resnet_jax.main' in l] == [
              f'--workdir={root}/{family}-{depth}' for depth in (20, 32, 44, 56)
              for family in ('plain', 'resnet_zeropad')]


@pytest.mark.parametrize('args,message', [
    (('--depths=8,21',), "depth '21' is not 6n+2"),
    (('--depths=2',), "depth '2' is not 6n+2"),
    (('--depths=20,20',), 'depth 20 is given twice'),
    (('--shortcut=identity',), 'zeropad or conv'),
    (('--steps=ten',), '--steps=ten must be a positive integer'),
    (('--config.model.num_layers=3',), 'use --depths'),
    (('--workdir=w',), 'unknown option --workdir'),
    (('runs',), "unexpected argument 'runs'"),
    (('--depths',), 'option --depths needs a value'),
    ((), '--root=DIR is required'),
])
def test_bad_sweep_arguments_are_one_line_errors(tmp_path, args, message):
  root = (f'--root={tmp_path}/r',) if args else ()
  result = sweep(*root, *args)
  assert_one_line_error(result, message)
  assert result.stdout == '' and not (tmp_path / 'r').exists()


def test_sweep_help():
  result = sweep('--help')
  assert result.returncode == 0 and result.stderr == ''
  assert result.stdout.startswith('usage: depth_sweep.sh --root=DIR')


@pytest.mark.slow
def test_compare_groups_and_labels(swept, tmp_path, capsys):
  root, _ = swept
  dirs = [str(root / name) for name in WORKDIRS]
  for group, width in (('none', 640), ('name', 1280)):
    out = tmp_path / group / 'c.png'
    compare.main([*dirs, f'--out={out}', f'--group={group}', '--labels=a,b'])
    with Image.open(out) as image:
      assert image.size == (width, 440)
    assert [r['run'] for r in read_table(capsys.readouterr().out)] == [
        'a', 'b']
  # The same run twice: the labels say which DIR is which.
  compare.main([dirs[0], dirs[0], f'--out={tmp_path}/d.png'])
  assert [r['run'] for r in read_table(capsys.readouterr().out)] == [
      f'plain-8 ({dirs[0]})'] * 2


@pytest.mark.parametrize('make,args,message', [
    (None, ('no/such/dir',), 'no/such/dir is not a folder'),
    ('empty', (), 'holds no training run: no metrics.jsonl'),
    ('run', ('--labels=a,b',), '--labels has 2 names for 1 runs'),
    ('run', ('--group=depth',), "invalid choice: 'depth'"),
])
@pytest.mark.slow
def test_compare_bad_input_is_one_line_error(swept, tmp_path, capsys, make,
                                             args, message):
  dirs = {None: [], 'empty': [str(tmp_path)],
          'run': [str(swept[0] / 'plain-8')]}[make]
  with pytest.raises(SystemExit) as exit_info:
    compare.main([*dirs, *args, f'--out={tmp_path}/x.png'])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: ') and message in err[0]
  assert not (tmp_path / 'x.png').exists()


def test_command_line_needs_no_matplotlib_and_exits_2():
  """`python -m resnet_jax.compare` on a missing DIR: one line, exit 2, and
  matplotlib is imported only when drawing."""
  code = ('import runpy, sys; sys.argv = ["compare", "no/such/dir", '
          '"--out=x.png"]\ntry:\n  runpy.run_module("resnet_jax.compare", '
          'run_name="__main__")\nfinally:\n  assert "matplotlib" not in '
          'sys.modules')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
  assert_one_line_error(result, 'no/such/dir is not a folder')
