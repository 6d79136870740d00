"""What a run writes for people to read, besides checkpoints.

In WORKDIR (process 0 only):
  metrics.jsonl        one JSON object per log interval or evaluation
  metrics.csv          the same records as CSV, one row per JSON line
  tensorboard/         TensorBoard event files (tensorboardX's format)
  plots/loss.png       train and validation loss against steps and epochs
  plots/accuracy.png   train and validation accuracy against steps and epochs
  plots/learning_rate.png  the configured schedule with the logged rates on
                       top (--mode=plot_schedule draws it before a run)
  report.md            written at the end: config summary, parameter count,
                       best validation accuracy and its step, wall time,
                       images/s and the plots

This module decides when each is written and writes the history files and
TensorBoard's; plots.py draws the plots and report.py composes report.md.

Every file is replaced whole or appended to (workdir.py): a crash or a full
disk never leaves a part of one. metrics.jsonl and metrics.csv are what a
resume needs: a failed write ends the run with one error line, the files as
they were. Plots are drawn at each evaluation (and at the end if records came
since), not at start-up, where they would delay the first step by seconds.
Plots, TensorBoard and report.md are best effort: a failure there prints one
warning and never stops training.
"""
import csv
import io
import json
import os
import socket
import struct
import sys
import time

import jax
from tqdm import tqdm

from resnet_jax import config as config_lib
from resnet_jax import plots, report
from resnet_jax import workdir as workdir_lib
from resnet_jax.errors import require

# CSV columns in this order; keys a record adds beyond these follow, sorted.
COLUMNS = ('step', 'epoch', 'train_loss', 'train_accuracy', 'val_loss',
           'val_accuracy', 'train_learning_rate', 'images_per_sec',
           'skipped_steps')


class Reporter:
  """Everything a training run writes for people to read, process 0 only.

  The train loop calls `write` for every log or evaluation record, `evaluated`
  after each evaluation and `finish` once at the end.

  On resume, records past the restored step (written after the checkpoint
  the run resumes from) are dropped, so the files tell one consistent story;
  so is a torn last line, with a warning.
  """

  def __init__(self, workdir: str, config, resume_step: int = 0):
    self.workdir = workdir
    self.config = config
    self.resume_step = resume_step
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.csv_path = os.path.join(workdir, 'metrics.csv')
    self.plot_dir = os.path.join(workdir, 'plots')
    self.enabled = jax.process_index() == 0
    self._warned = set()
    self._schedule = None
    self._columns = None
    self._tb = None
    self._unplotted = True  # Records written since the plots were drawn.
    if not self.enabled:
      return
    if os.path.exists(self.path):
      records, set_aside = workdir_lib.read_jsonl(self.path)
      if set_aside:
        print(f'warning: {self.path}: dropped {set_aside} bytes of torn or '
              'unreadable lines (a write cut short by a crash or a full '
              'disk); the run goes on from its checkpoint', file=sys.stderr)
      workdir_lib.write_text(self.path, ''.join(
          json.dumps(r) + '\n' for r in records if r['step'] <= resume_step))
    self._rewrite_csv()
    self._guard('tensorboard', self._open_tensorboard)

  def write(self, record: dict):
    """One record: {'step', 'epoch', 'train_*' or 'val_*', ...}."""
    if not self.enabled:
      return
    self._unplotted = True
    workdir_lib.append(self.path, json.dumps(record) + '\n')
    if set(record) - set(self._columns):
      self._rewrite_csv()  # A new key: a new column for every row.
    else:
      row = io.StringIO()
      csv.DictWriter(row, self._columns).writerow(_csv_row(record))
      workdir_lib.append(self.csv_path, row.getvalue())
    if self._tb is not None:
      self._guard('tensorboard', self._tensorboard_write, record)

  def evaluated(self):
    """Called after each evaluation's record is written: redraws the plots."""
    if not self.enabled:
      return
    self._guard('plots', self.plot)

  def finish(self, summary: dict):
    """Called once at the end with {'num_params', 'wall_time_s', ...}."""
    if not self.enabled:
      return
    if self._unplotted:  # Else the last evaluation drew them.
      self._guard('plots', self.plot)
    if self._tb is not None:
      self._guard('tensorboard', self._tensorboard_finish, summary)
      self._tb = None
    self._guard('report', self._write_report, summary)

  def plot(self):
    """(Re)draws every plot from the history in metrics.jsonl."""
    history = read_history(self.workdir) if os.path.exists(self.path) else []
    if self._schedule is None:
      self._schedule = plots.schedule_points(self.config.train)
    plots.plot_history(history, self.plot_dir,
                       label_smoothing=self.config.train.label_smoothing)
    plots.plot_schedule(self.config,
                        os.path.join(self.plot_dir, 'learning_rate.png'),
                        history=history, points=self._schedule)
    self._unplotted = False

  def _guard(self, what, fn, *args):
    """Runs fn; on failure warns once per `what` and carries on."""
    try:
      return fn(*args)
    except Exception as e:  # Reporting must never stop training.
      if what not in self._warned:
        self._warned.add(what)
        cause = (e.what if isinstance(e, workdir_lib.WriteError)
                 else f'{type(e).__name__}: {e}')
        # tqdm.write: a line of its own, whatever the progress bar drew.
        tqdm.write(f'warning: {what} failed (training goes on; later '
                   f'failures are not reported): {cause}', file=sys.stderr)
      if what == 'tensorboard':
        self._tb = None

  def _rewrite_csv(self):
    history = read_history(self.workdir) if os.path.exists(self.path) else []
    write_csv(history, self.csv_path)
    self._columns = csv_columns(history)

  def _open_tensorboard(self):
    # On resume, TensorBoard hides the events from earlier runs past the
    # restored step, as the JSON lines drop them.
    self._tb = EventFile(os.path.join(self.workdir, 'tensorboard'),
                         purge_step=self.resume_step + 1 if self.resume_step
                         else None)
    if not self.resume_step:
      self._tb.add(0, texts={'config': '```\n' + self.config.to_json_best_effort(
          indent=2) + '\n```'})

  def _tensorboard_write(self, record):
    self._tb.add(record['step'], scalars={
        tensorboard_tag(key): value for key, value in record.items()
        if key != 'step' and value is not None})

  def _tensorboard_finish(self, summary):
    lines = [f'{k}: {v}' for k, v in summary.items()]
    self._tb.add(summary.get('step', 0), texts={'summary': '  \n'.join(lines)})

  def _write_report(self, summary):
    history = read_history(self.workdir) if os.path.exists(self.path) else []
    text = report.report_markdown(self.config, summary, history,
                                  resume_step=self.resume_step)
    workdir_lib.write_text(os.path.join(self.workdir, 'report.md'), text)


def read_history(workdir: str) -> list[dict]:
  """The whole records of metrics.jsonl; a torn line is left out, with a
  one-line warning (a run in progress may be writing it)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  records, set_aside = workdir_lib.read_jsonl(path)
  if set_aside:
    print(f'warning: {path}: left out {set_aside} bytes of torn or unreadable '
          'lines (a write cut short by a crash, a full disk, or in progress)',
          file=sys.stderr)
  return records


# CSV ------------------------------------------------------------------------


def csv_columns(history) -> list[str]:
  extra = sorted({k for r in history for k in r} - set(COLUMNS))
  return list(COLUMNS) + extra


def _csv_row(record):
  return {k: '' if v is None else v for k, v in record.items()}


def write_csv(history, path):
  text = io.StringIO()
  writer = csv.DictWriter(text, csv_columns(history))
  writer.writeheader()
  writer.writerows(_csv_row(r) for r in history)
  workdir_lib.write_text(path, text.getvalue())


# TensorBoard -----------------------------------------------------------------


class EventFile:
  """A TensorBoard event file, appended to by the caller's thread.

  tensorboardX's SummaryWriter writes from a thread of its own: a full disk
  kills it with a traceback, and its bounded queue then blocks training for
  good. Here each call's events are appended whole or not at all
  (workdir.append), and a failure raises where Reporter._guard warns.
  """

  def __init__(self, logdir: str, purge_step: int | None = None):
    require('tensorboardX', 'tensorboardX', 'TensorBoard logging')
    # pylint: disable=import-outside-toplevel
    from tensorboardX import summary
    from tensorboardX.proto import event_pb2
    from tensorboardX.record_writer import masked_crc32c
    self._summary, self._event_pb2, self._crc = summary, event_pb2, masked_crc32c
    os.makedirs(logdir, exist_ok=True)
    # SummaryWriter's name; the suffix keeps a resume within the same second
    # from reusing the previous file, and sorts after it.
    self.path = os.path.join(logdir, f'events.out.tfevents.{int(time.time())}.'
                             f'{socket.gethostname()}.{time.time_ns()}')
    events = [event_pb2.Event(file_version='brain.Event:2')]
    if purge_step:  # TensorBoard drops the earlier events from here on.
      events += [event_pb2.Event(step=purge_step, file_version='brain.Event:2'),
                 event_pb2.Event(step=purge_step, session_log=event_pb2.SessionLog(
                     status=event_pb2.SessionLog.START))]
    self._append(events)

  def add(self, step: int, scalars=None, texts=None):
    """Scalars {tag: value} and texts {tag: markdown} at `step`."""
    summaries = ([self._summary.scalar(t, v) for t, v in (scalars or {}).items()]
                 + [self._summary.text(t, v) for t, v in (texts or {}).items()])
    self._append([self._event_pb2.Event(step=int(step), summary=s)
                  for s in summaries])

  def _append(self, events):
    """TFRecords: length, its masked CRC32C, the event, its masked CRC32C."""
    records = []
    for event in events:
      event.wall_time = time.time()
      data = event.SerializeToString()
      header = struct.pack('Q', len(data))
      records += [header, struct.pack('I', self._crc(header)), data,
                  struct.pack('I', self._crc(data))]
    workdir_lib.append(self.path, b''.join(records))


def tensorboard_tag(key: str) -> str:
  """'train_loss' -> 'train/loss', 'val_accuracy' -> 'val/accuracy'."""
  for prefix in ('train', 'val'):
    if key.startswith(prefix + '_'):
      return f'{prefix}/{key[len(prefix) + 1:]}'
  return key


def write_schedule_plot(config, workdir: str) -> str:
  """--mode=plot_schedule: WORKDIR/plots/learning_rate.png, before training.

  Needs no data, model or checkpoint; any history already in the workdir is
  drawn on top.
  """
  config_lib.validate(config)
  history = (read_history(workdir)
             if os.path.exists(os.path.join(workdir, 'metrics.jsonl')) else [])
  path = os.path.join(workdir, 'plots', 'learning_rate.png')
  return plots.plot_schedule(config, path, history=history)
