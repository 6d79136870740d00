"""What a training run writes for people: CSV, TensorBoard, plots, report.md."""
import csv
import os
import struct

import numpy as np
import pytest
from PIL import Image

from conftest import cli_args, run_cli, tiny_config
from resnet_jax import plots, reporting, train

PLOT_SIZE = (640, 400)  # plots.FIGSIZE at plots.DPI.


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A finished 12-step run: (workdir, summary, history)."""
  workdir = tmp_path_factory.mktemp('run')
  summary = train.train_and_evaluate(tiny_config(), str(workdir))
  return workdir, summary, reporting.read_history(str(workdir))


def read_tensorboard_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value), ...]} from every event file under `logdir`.

  A plain TFRecord reader (no TensorFlow).
  """
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  out = {}
  for root, _, files in os.walk(logdir):
    for name in sorted(files):
      if 'tfevents' not in name:
        continue
      with open(os.path.join(root, name), 'rb') as f:
        data = f.read()
      pos = 0
      while pos + 12 <= len(data):
        (length,) = struct.unpack('<Q', data[pos:pos + 8])
        event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
        pos += 12 + length + 4
        for value in event.summary.value:
          if value.HasField('simple_value'):
            out.setdefault(value.tag, []).append(
                (event.step, float(value.simple_value)))
  return out


def assert_png(path, size):
  with Image.open(path) as image:
    assert image.format == 'PNG' and image.size == size
    pixels = np.asarray(image.convert('L'))
  assert pixels.std() > 10  # Something is drawn, not a blank canvas.


def read_events(logdir):
  """Every tensorboard Event under logdir, parsed from the TFRecord files."""
  from tensorboardX.proto import event_pb2
  events = []
  for name in sorted(os.listdir(logdir)):
    data = open(os.path.join(logdir, name), 'rb').read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack('<Q', data[pos:pos + 8])
      record = data[pos + 12:pos + 12 + length]
      events.append(event_pb2.Event.FromString(record))
      pos += 16 + length
  return events


def test_csv_has_the_columns_and_rows_of_the_jsonl(run):
  workdir, _, history = run
  with open(workdir / 'metrics.csv', newline='') as f:
    reader = csv.DictReader(f)
    rows = list(reader)
  assert reader.fieldnames == list(reporting.COLUMNS)
  assert len(rows) == len(history) == 6  # 4 log intervals + 2 evaluations.
  for row, record in zip(rows, history):
    for column in reporting.COLUMNS:
      value = record.get(column)
      if value is None:
        assert row[column] == ''
      else:
        assert float(row[column]) == pytest.approx(value, rel=1e-12)
  assert [int(r['step']) for r in rows if r['val_accuracy']] == [6, 12]


def test_plots_are_pngs_of_the_expected_size(run):
  workdir, _, _ = run
  for name in plots.PLOTS:
    assert_png(workdir / 'plots' / name, PLOT_SIZE)


def test_report_names_the_best_step_and_embeds_the_plots(run):
  workdir, summary, history = run
  report = (workdir / 'report.md').read_text()
  evals = [r for r in history if 'val_accuracy' in r]
  best = max(evals, key=lambda r: (r['val_accuracy'], r['step']))
  assert f'**{best["val_accuracy"]:.4f} at step {best["step"]}**' in report
  assert f'| parameters | {summary["num_params"]:,} |' in report
  assert summary['num_params'] == 78042  # ResNet-8, conv shortcuts.
  assert f'| wall time | {summary["wall_time_s"]:.1f} s |' in report
  assert 'ResNet-8 (conv shortcuts)' in report and 'images/s' in report
  for name in plots.PLOTS:
    assert f'](plots/{name})' in report


def test_tensorboard_holds_the_history_as_scalars(run):
  workdir, _, history = run
  scalars = read_tensorboard_scalars(str(workdir / 'tensorboard'))
  for key, tag in [('train_loss', 'train/loss'),
                   ('train_accuracy', 'train/accuracy'),
                   ('train_learning_rate', 'train/learning_rate'),
                   ('val_loss', 'val/loss'), ('val_accuracy', 'val/accuracy')]:
    expected = [(r['step'], r[key]) for r in history if key in r]
    assert [s for s, _ in scalars[tag]] == [s for s, _ in expected]
    np.testing.assert_allclose([v for _, v in scalars[tag]],
                               [v for _, v in expected], rtol=1e-6)


def test_resume_drops_later_records_everywhere(tmp_path):
  config = tiny_config()
  first = reporting.Reporter(str(tmp_path), config)
  for step in (3, 6, 9, 12):
    first.write({'step': step, 'epoch': step / 8, 'train_loss': 1.0 / step})
  first.write({'step': 12, 'epoch': 1.5, 'val_accuracy': 0.5, 'val_loss': 1.0})
  first.evaluated()
  second = reporting.Reporter(str(tmp_path), config, resume_step=6)
  second.write({'step': 9, 'epoch': 9 / 8, 'train_loss': 0.5})
  second.finish({'step': 9, 'num_params': 1, 'wall_time_s': 1.0})
  with open(tmp_path / 'metrics.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert [(int(r['step']), float(r['train_loss'])) for r in rows] == [
      (3, 1 / 3), (6, 1 / 6), (9, 0.5)]
  assert rows == [{k: (str(v) if v is not None else '') for k, v in
                   {c: r.get(c) for c in reporting.COLUMNS}.items()}
                  for r in reporting.read_history(str(tmp_path))]
  # TensorBoard is told to hide the first run's events from step 7 on.
  starts = [e.step for e in read_events(tmp_path / 'tensorboard')
            if e.HasField('session_log')]
  assert starts == [7]


def test_a_plotting_failure_warns_and_training_goes_on(tmp_path, monkeypatch,
                                                       capsys):
  def broken(*args, **kwargs):
    raise RuntimeError('no display')
  monkeypatch.setattr(plots, 'plot_history', broken)
  reporter = reporting.Reporter(str(tmp_path), tiny_config())
  reporter.write({'step': 6, 'epoch': 0.75, 'val_accuracy': 0.5,
                  'val_loss': 1.0})
  reporter.evaluated()
  reporter.finish({'step': 6, 'num_params': 1, 'wall_time_s': 1.0})
  err = capsys.readouterr().err
  assert err.count('warning: plots failed') == 1 and 'no display' in err
  assert len(reporting.read_history(str(tmp_path))) == 1
  assert '0.5000 at step 6' in (tmp_path / 'report.md').read_text()


def test_schedule_is_drawn_before_training(tmp_path):
  """--mode=plot_schedule: a check of the config, with no data or model."""
  config = tiny_config(**{'train.schedule': 'step', 'train.steps': 1000,
                          'train.warmup_steps': 0})
  result = run_cli(cli_args(config, tmp_path / 'w', '--mode=plot_schedule'))
  assert result.returncode == 0, result.stderr
  path = tmp_path / 'w' / 'plots' / 'learning_rate.png'
  assert result.stdout.strip().splitlines()[-1] == str(path)
  assert_png(path, PLOT_SIZE)
  assert sorted(os.listdir(tmp_path / 'w')) == ['plots']
  steps, rates = plots.schedule_points(config.train)
  assert steps[0] == 0 and steps[-1] == 1000
  assert rates[0] == pytest.approx(0.1) and rates[-1] == pytest.approx(1e-3)
