"""The plots a run draws from its history, and the learning-rate schedule's.

In WORKDIR/plots: loss.png and accuracy.png (train and validation curves,
each member thinly and their mean boldly) and learning_rate.png (the
configured schedule with the logged rates on top). Each is drawn whole from
the records it is given (reporting.Reporter passes metrics.jsonl's) and
written whole (workdir.save_figure); nothing here reads the workdir.
`plot_schedule` needs neither data nor a model: --mode=plot_schedule draws it
before training.
"""
import os

import jax
import numpy as np

from resnet_jax import config as config_lib
from resnet_jax import optim
from resnet_jax import workdir as workdir_lib
from resnet_jax.errors import require

# Plot size in pixels: FIGSIZE inches at DPI.
DPI = 100
FIGSIZE = (6.4, 4.0)
# The files in WORKDIR/plots.
PLOTS = ('loss.png', 'accuracy.png', 'learning_rate.png')
# Schedule plots evaluate the schedule at no more than this many steps.
SCHEDULE_POINTS = 4001


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
