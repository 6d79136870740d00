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
import statistics
import struct
import sys
import time

import jax
import numpy as np
from tqdm import tqdm

from resnet_jax import config as config_lib
from resnet_jax import models, optim
from resnet_jax import workdir as workdir_lib
from resnet_jax.errors import require

# Plot size in pixels: FIGSIZE inches at DPI.
DPI = 100
FIGSIZE = (6.4, 4.0)
PLOTS = ('loss.png', 'accuracy.png', 'learning_rate.png')
# CSV columns in this order; keys a record adds beyond these follow, sorted.
COLUMNS = ('step', 'epoch', 'train_loss', 'train_accuracy', 'val_loss',
           'val_accuracy', 'train_learning_rate', 'images_per_sec',
           'skipped_steps')
# Schedule plots evaluate the schedule at no more than this many steps.
SCHEDULE_POINTS = 4001


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
      self._schedule = schedule_points(self.config.train)
    plot_history(history, self.plot_dir,
                 label_smoothing=self.config.train.label_smoothing)
    plot_schedule(self.config, os.path.join(self.plot_dir, 'learning_rate.png'),
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
    text = report_markdown(self.config, summary, history,
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


# Plots -----------------------------------------------------------------------


def _figure():
  """A pyplot-free Agg figure: no global state, safe in any thread."""
  Figure = require('matplotlib.figure', 'matplotlib', 'plots').Figure
  return Figure(figsize=FIGSIZE, dpi=DPI, layout='constrained')


def _epoch_axis(ax, history):
  """A secondary x axis on top in epochs, when the history gives the ratio."""
  ratio = next((r['epoch'] / r['step'] for r in history
                if r.get('step') and r.get('epoch') is not None), None)
  if ratio:
    top = ax.secondary_xaxis(
        'top', functions=(lambda s: s * ratio, lambda e: e / ratio))
    top.set_xlabel('epoch')


def _series(history, key):
  pairs = [(r['step'], r[key]) for r in history if r.get(key) is not None]
  return ([s for s, _ in pairs], [v for _, v in pairs])


def plot_history(history, plot_dir, label_smoothing=0.0):
  """plots/loss.png and plots/accuracy.png: train and validation curves."""
  os.makedirs(plot_dir, exist_ok=True)
  smoothed = ' (label-smoothed)' if label_smoothing else ''
  for name, title in (('loss', 'Loss'), ('accuracy', 'Accuracy')):
    fig = _figure()
    ax = fig.add_subplot()
    # val_ema: the averaged weights' validation (train.ema_decay).
    for split, label, style, color in (
        ('train', 'train' + (smoothed if name == 'loss' else ''), '-', 'C0'),
        ('val', 'validation', 'o-', 'C1'),
        ('val_ema', 'validation, averaged weights', 's-', 'C2')):
      members = member_keys(history, f'{split}_{name}')
      for key in members:  # Each member thinly, their mean boldly.
        steps, values = _series(history, key)
        ax.plot(steps, values, style, color=color, linewidth=0.6, alpha=0.4,
                markersize=1.5)
      steps, values = _series(history, f'{split}_{name}')
      if steps:
        ax.plot(steps, values, style, color=color, markersize=3,
                linewidth=2.2 if members else None,
                label=label + (f' (mean of {len(members)})' if members else ''))
    ax.set_xlabel('step')
    ax.set_ylabel(name)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend()
    _epoch_axis(ax, history)
    workdir_lib.save_figure(fig, os.path.join(plot_dir, f'{name}.png'))


def member_keys(history, key: str) -> list[str]:
  """'KEY_member0', 'KEY_member1', ...: the per-member series of `key` (none
  for a single member)."""
  prefix = key + '_member'
  found = {k for r in history for k in r
           if k.startswith(prefix) and k[len(prefix):].isdigit()}
  return sorted(found, key=lambda k: int(k[len(prefix):]))


def schedule_points(train_config):
  """(steps, rates) of `optim.create_schedule`, evaluated on the CPU."""
  steps = np.unique(np.linspace(0, train_config.steps,
                                SCHEDULE_POINTS).astype(np.int64))
  schedule = optim.create_schedule(train_config)
  try:  # A few thousand scalars: not worth an accelerator round trip.
    device = jax.local_devices(backend='cpu')[0]
  except RuntimeError:  # JAX_PLATFORMS without cpu.
    device = jax.local_devices()[0]
  with jax.default_device(device):
    rates = np.asarray(jax.device_get(schedule(steps)), np.float64)
  return steps, rates


def plot_schedule(config, path, history=(), points=None, steps_per_epoch=None):
  """The learning rate the config asks for, with any logged rates on top.

  Needs neither data nor a model: `--mode=plot_schedule` draws it before
  training as a check of the config.
  """
  steps, rates = points if points is not None else schedule_points(config.train)
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  fig = _figure()
  ax = fig.add_subplot()
  peaks = sorted({m['learning_rate'] for m in config_lib.members(config)})
  if peaks == [config.train.learning_rate]:
    ax.plot(steps, rates, label=f'{config.train.schedule} schedule')
  else:  # A learning-rate sweep: the schedule at each member's peak.
    for peak in peaks:
      ax.plot(steps, rates * (peak / config.train.learning_rate),
              label=f'{config.train.schedule} schedule, peak {peak:g}')
  for key in (member_keys(history, 'train_learning_rate')
              or ['train_learning_rate']):
    logged_steps, logged = _series(history, key)
    if logged_steps:
      # Logged is the rate of the interval's last step, which used step - 1.
      ax.plot(np.asarray(logged_steps) - 1, logged, '.', color='black',
              label='logged' if key.endswith(('rate', 'member0')) else None,
              markersize=4)
  ax.set_xlabel('step')
  ax.set_ylabel('learning rate')
  ax.set_title(f'Learning rate: peak {", ".join(f"{p:g}" for p in peaks)}, '
               f'warmup '
               f'{config.train.warmup_steps} of {config.train.steps} steps')
  ax.set_xlim(0, config.train.steps)
  ax.set_ylim(bottom=0)
  ax.grid(alpha=0.3)
  ax.legend()
  if steps_per_epoch:
    history = [{'step': steps_per_epoch, 'epoch': 1.0}]
  _epoch_axis(ax, history)
  return workdir_lib.save_figure(fig, path)


# report.md -------------------------------------------------------------------


def best_validation(history, prefix='val'):
  """(record) with the highest validation accuracy (`prefix`: 'val' of the
  raw weights, 'val_ema' of the averaged ones), latest on ties, or None.

  The tie-break is that of `--checkpoint=best`.
  """
  key = f'{prefix}_accuracy'
  evals = [r for r in history if r.get(key) is not None]
  if not evals:
    return None
  return max(evals, key=lambda r: (r[key], r['step']))


def _fmt(value, spec):
  return 'n/a' if value is None else format(value, spec)


def report_markdown(config, summary, history, resume_step=0) -> str:
  m, d, t = config.model, config.data, config.train
  model = models.describe(m).title
  channels = 1 if d.grayscale else 3
  swept = lambda values, default: (
      ', '.join(f'{v:g}' for v in values) + ' (swept)' if values
      else f'{default:g}')
  optimizer = (f'{t.optimizer}, peak learning rate '
               f'{swept(t.get("sweep_learning_rates", ()), t.learning_rate)}, '
               f'{t.schedule} schedule, {t.warmup_steps} warmup steps, '
               f'momentum {t.momentum:g}, weight decay '
               f'{swept(t.get("sweep_weight_decays", ()), t.weight_decay)}, '
               f'label smoothing {t.label_smoothing:g}')
  best = best_validation(history)
  last = next((r for r in reversed(history) if r.get('epoch') is not None),
              None)
  epochs = (f' ({last["epoch"] * t.steps / last["step"]:.1f} epochs)'
            if last and last['step'] else '')
  rates = [r['images_per_sec'] for r in history
           if r.get('images_per_sec') is not None]
  step = summary.get('step')
  rows = [
      ('model', f'{model}, {m.num_classes} classes'),
      ('parameters', f'{summary["num_params"]:,}'
       if summary.get('num_params') is not None else 'n/a'),
      ('data', f'{d.source}, {d.image_size}x{d.image_size}x{channels}'
       + (f', {d.dir}' if d.get('dir') else '')),
      ('optimizer', optimizer),
      ('training', f'batch {t.batch_size} x {t.steps:,} steps{epochs}, '
       f'{t.dtype}, seed {config.seed}'),
      ('reached step', f'{step:,}' if step is not None else 'n/a'),
  ]
  if resume_step:
    rows.append(('resumed from step', f'{resume_step:,}'))
  if best:
    rows.append(('best validation accuracy',
                 f'**{best["val_accuracy"]:.4f} at step {best["step"]:,}** '
                 f'(epoch {best["epoch"]:.2f}, loss {best["val_loss"]:.4f})'))
  if not d.get('val_fraction', 0.1):
    rows.append(('validation', 'none: data.val_fraction=0 trains on every '
                 'training image; the latest checkpoint is the result '
                 '(--mode=evaluate --split=test)'))
  rows.append(('final validation accuracy / loss',
               f'{_fmt(summary.get("val_accuracy"), ".4f")} / '
               f'{_fmt(summary.get("val_loss"), ".4f")}'))
  rows += averaged_rows(t, history)
  augmentation = augmentation_row(config)
  if augmentation:
    rows.append(('augmentation', augmentation))
  rows += [
      ('wall time', f'{_fmt(summary.get("wall_time_s"), ".1f")} s'
       + (' (since the resume)' if resume_step else '')),
      ('images/s', f'{_fmt(statistics.median(rates) if rates else None, ".0f")}'
       f' median of the logged intervals, '
       f'{_fmt(summary.get("images_per_sec"), ".0f")} last'),
      ('devices', f'{jax.device_count()} x {jax.devices()[0].platform}'),
  ]
  lines = ['# Training report', '', '| | |', '|---|---|']
  lines += [f'| {k} | {v} |' for k, v in rows]
  lines += members_table(summary.get('members') or [], history)
  lines += ['', 'Full config: [config.json](config.json); history: '
            '[metrics.jsonl](metrics.jsonl), [metrics.csv](metrics.csv); '
            'TensorBoard: `tensorboard --logdir=tensorboard`.', '',
            '## Plots', '']
  lines += [f'![{name[:-4]}](plots/{name})' for name in PLOTS]
  return '\n'.join(lines) + '\n'


def augmentation_row(config) -> str:
  """The training augmentation, when it is not the default crop and flip
  ('' when it is)."""
  d, t = config.data, config.train
  parts = [name for name, on in (('crop', d.get('random_crop', True)),
                                 ('flip', d.get('random_flip', True))) if on]
  if d.get('cutout_size'):
    parts.append(f'cutout {d.cutout_size}')
  if t.get('mixup_alpha'):
    parts.append(f'mixup alpha {t.mixup_alpha:g}')
  if t.get('cutmix_alpha'):
    parts.append(f'CutMix alpha {t.cutmix_alpha:g}')
  if parts == ['crop', 'flip']:
    return ''
  return ', '.join(parts) or 'none'


def averaged_rows(train_config, history) -> list[tuple[str, str]]:
  """report.md's rows of the averaged weights (train.ema_decay): their
  best and final validation, and which weights rank the best checkpoint."""
  if not train_config.get('ema_decay'):
    return []
  rows = [('weight averaging', f'decay {train_config.ema_decay:g} (warm-up '
           'min(decay, (1 + t) / (10 + t))); the best checkpoint ranked by '
           f'the {"averaged" if train_config.get("rank_by") == "ema" else "raw"} '
           'weights')]
  best = best_validation(history, 'val_ema')
  if best:
    rows.append(('best validation accuracy, averaged weights',
                 f'**{best["val_ema_accuracy"]:.4f} at step '
                 f'{best["step"]:,}** (epoch {best["epoch"]:.2f}, loss '
                 f'{best["val_ema_loss"]:.4f})'))
    last = next(r for r in reversed(history)
                if r.get('val_ema_accuracy') is not None)
    rows.append(('final validation accuracy / loss, averaged weights',
                 f'{last["val_ema_accuracy"]:.4f} / '
                 f'{_fmt(last["val_ema_loss"], ".4f")}'))
  return rows


def members_table(members, history=()) -> list[str]:
  """Markdown lines: each member's hyperparameters and final validation,
  with its averaged weights' accuracy when the run kept an average."""
  if not members:
    return []
  last = next((r for r in reversed(history)
               if r.get('val_ema_accuracy') is not None), None)
  averaged = None
  if last:
    averaged = ([last['val_ema_accuracy']] if len(members) == 1 else
                [last.get(f'val_ema_accuracy_member{k}')
                 for k in range(len(members))])
  extra = ' averaged weights\' accuracy |' if averaged else ''
  lines = ['', '## Members', '',
           '| member | seed | learning rate | weight decay | validation '
           f'accuracy | validation loss |{extra} |',
           '|---|---|---|---|---|---|' + ('---|' if averaged else '') + '---|']
  for k, m in enumerate(members):
    column = f' {_fmt(averaged[k], ".4f")} |' if averaged else ''
    lines.append(f'| {k} | {m["seed"]} | {m["learning_rate"]:g} | '
                 f'{m["weight_decay"]:g} | {_fmt(m.get("val_accuracy"), ".4f")} '
                 f'| {_fmt(m.get("val_loss"), ".4f")} |{column} '
                 f'{"diverged, frozen" if m.get("frozen") else ""} |')
  return lines


def write_schedule_plot(config, workdir: str) -> str:
  """--mode=plot_schedule: WORKDIR/plots/learning_rate.png, before training.

  Needs no data, model or checkpoint; any history already in the workdir is
  drawn on top.
  """
  config_lib.validate(config)
  history = (read_history(workdir)
             if os.path.exists(os.path.join(workdir, 'metrics.jsonl')) else [])
  path = os.path.join(workdir, 'plots', 'learning_rate.png')
  return plot_schedule(config, path, history=history)
