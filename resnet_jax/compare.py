"""Training curves of several runs on shared axes, and a table of their results.

  python -m resnet_jax.compare DIR [DIR ...] --out=FILE.png [--table=FILE.md]
      [--group=name|family|none] [--labels=a,b,...]

He et al. 2015 (Fig. 6, Table 6): plain nets of 20 to 56 layers get worse as
they get deeper, ResNets get better. launch/depth_sweep.sh trains both and
calls this. Reads only what runs write (config.json, metrics.jsonl and, once a
run ends, report.md), so runs still in progress can be compared too.
"""
import argparse
import json
import math
import os
import re
import statistics
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import ml_collections

from resnet_jax import models, plots, report, reporting
from resnet_jax import workdir as workdir_lib
from resnet_jax.errors import UserError, exit_with, require

GROUPS = ('name', 'family', 'none')
COLUMNS = ('run', 'family', 'depth', 'parameters', 'steps', 'epochs',
           'final val accuracy', 'best val accuracy', 'best at step',
           'final train error', 'wall time', 'images/s')


@dataclass
class Run:
  workdir: str
  config: dict  # config.json
  history: list  # metrics.jsonl
  report: dict  # report.md's rows, {} before the run ends
  label: str = ''

  @property
  def model(self) -> models.Description:
    return models.describe(ml_collections.ConfigDict(self.config['model']))

  def group(self, by: str) -> str:
    """The panel the run goes in: its model name, family or one for all."""
    if by == 'none':
      return 'all runs'
    return self.model.family if by == 'family' else self.model.kind


def load_run(workdir: str) -> Run:
  """One workdir's files; UserError if it holds no run with metrics."""
  if not os.path.isdir(workdir):
    raise UserError(f'{workdir} is not a folder')
  try:
    history = reporting.read_history(workdir)
    with open(os.path.join(workdir, 'config.json')) as f:
      config = json.load(f)
  except FileNotFoundError as e:
    raise UserError(f'{workdir} holds no training run: no '
                    f'{os.path.basename(e.filename)}') from None
  except ValueError as e:  # Not JSON: a truncated line, a foreign file.
    raise UserError(f'{workdir}: unreadable metrics or config: {e}') from None
  if not history:
    raise UserError(f'{workdir} holds no metrics yet (metrics.jsonl is empty)')
  return Run(workdir, config, history, read_report(workdir))


def read_report(workdir: str) -> dict:
  """report.md's `| name | value |` rows as {name: value}; {} if absent."""
  path = os.path.join(workdir, 'report.md')
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    cells = [line.strip().strip('|').split('|', 1) for line in f
             if line.startswith('| ')]
  return {c[0].strip(): c[1].strip() for c in cells if len(c) == 2}


def count_parameters(config: dict) -> int:
  """Parameters of the model config.json describes, without initializing it."""
  model = models.create_model(ml_collections.ConfigDict(config['model']))
  size, channels = config['data']['image_size'], (
      1 if config['data']['grayscale'] else 3)
  image = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), image)
  return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes['params']))


def parameters(run: Run) -> int:
  """report.md's count, or for a run still in progress, config.json's model."""
  text = run.report.get('parameters', '')
  if re.fullmatch(r'[\d,]+', text):
    return int(text.replace(',', ''))
  return count_parameters(run.config)


def wall_time(run: Run) -> str:
  """report.md's, if it reports the last step logged: one written by an earlier
  segment (--stop_at_step, then resumed) misses the steps since."""
  text, step = run.report.get('wall time', ''), run.history[-1]['step']
  seconds = re.match(r'([\d.]+) s', text)
  if not seconds or run.report.get('reached step') != f'{step:,}':
    return 'n/a'
  return f'{float(seconds[1]) / 60:.1f} min' + (
      ' since resume' if 'resume' in text else '')


def _last(history, key):
  return next((r[key] for r in reversed(history) if r.get(key) is not None),
              None)


def table_row(run: Run) -> list[str]:
  """The COLUMNS of one run, formatted."""
  history, fmt = run.history, report._fmt
  step, steps = history[-1]['step'], run.config['train']['steps']
  best = report.best_validation(history) or {}
  train_accuracy = _last(history, 'train_accuracy')
  rates = [r['images_per_sec'] for r in history
           if r.get('images_per_sec') is not None]
  return [run.label, run.group('family'), fmt(run.model.depth, 'd'),
          f'{parameters(run):,}',
          f'{step:,}' if step >= steps else f'{step:,} of {steps:,}',
          fmt(_last(history, 'epoch'), '.1f'),
          fmt(_last(history, 'val_accuracy'), '.4f'),
          fmt(best.get('val_accuracy'), '.4f'), fmt(best.get('step'), ','),
          fmt(None if train_accuracy is None else 1 - train_accuracy, '.4f'),
          wall_time(run), fmt(statistics.median(rates) if rates else None,
                              '.0f')]


def markdown_table(runs) -> str:
  lines = ['| ' + ' | '.join(COLUMNS) + ' |', '|' + '---|' * len(COLUMNS)]
  lines += ['| ' + ' | '.join(table_row(run)) + ' |' for run in runs]
  return '\n'.join(lines) + '\n'


def _errors(history, key):
  """(epochs, error in %) of the records that have `key` (an accuracy)."""
  points = [(r['epoch'], 100 * (1 - r[key])) for r in history
            if r.get(key) is not None and r.get('epoch') is not None]
  return [e for e, _ in points], [v for _, v in points]


def draw(runs, path: str, group: str):
  """One panel per group; per run one colour, training thin, validation bold."""
  # pyplot-free: Agg renders the PNG.
  Figure = require('matplotlib.figure', 'matplotlib',
                   'the comparison plot').Figure
  panels = {}
  for run in runs:
    panels.setdefault(run.group(group), []).append(run)
  width, height = plots.FIGSIZE
  fig = Figure(figsize=(width * len(panels), height + 0.4), dpi=plots.DPI,
               layout='constrained')
  axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
  for ax, (title, members) in zip(axes, panels.items()):
    for i, run in enumerate(members):  # Colours restart per panel: by depth.
      color = f'C{i % 10}'
      ax.plot(*_errors(run.history, 'train_accuracy'), color=color,
              linewidth=0.8, alpha=0.8)
      ax.plot(*_errors(run.history, 'val_accuracy'), 'o-', color=color,
              linewidth=2.2, markersize=3, label=run.label)
    ax.set_title(title)
    ax.set_xlabel('epoch')
    ax.grid(alpha=0.3)
    ax.legend()
  # The first epochs' ~90% error would squash the differences that matter.
  final = [errors[-1] for run in runs
           for key in ('train_accuracy', 'val_accuracy')
           if (errors := _errors(run.history, key)[1])]
  axes[0].set_ylim(0, min(100, 2 * max(final, default=50)))
  axes[0].set_ylabel('error (%)')
  fig.suptitle('training error (thin) and validation error (bold)')
  workdir_lib.save_figure(fig, path)


def set_labels(runs, labels: str | None):
  """--labels, else 'plain-20' / 'resnet-56'; the DIR disambiguates repeats."""
  if labels is not None:
    names = labels.split(',')
    if len(names) != len(runs):
      raise UserError(f'--labels has {len(names)} names for {len(runs)} runs')
  else:
    names = [r.model.kind.lower() + (f'-{r.model.depth}' if r.model.depth
                                     else '') for r in runs]
    names = [f'{n} ({r.workdir})' if names.count(n) > 1 else n
             for n, r in zip(names, runs)]
  for run, name in zip(runs, names):
    run.label = name


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    exit_with(message)


def main(argv=None):
  parser = _Parser(prog='python -m resnet_jax.compare',
                   description=__doc__.split('\n', 1)[0])
  parser.add_argument('workdirs', nargs='+', metavar='DIR', help='workdirs')
  parser.add_argument('--out', required=True, metavar='FILE.png')
  parser.add_argument('--table', metavar='FILE.md',
                      help='also write the table (always printed) here')
  parser.add_argument('--group', choices=GROUPS, default='family',
                      help='one panel per model kind (plain, ResNet, WRN, ...), '
                      'family (plain, ResNet (conv), WRN (k=10), ...) or one '
                      'for all')
  parser.add_argument('--labels', metavar='A,B,...',
                      help='one per DIR (default: plain-20, resnet-56, ...)')
  args = parser.parse_args(argv)
  try:
    runs = [load_run(workdir) for workdir in args.workdirs]
    set_labels(runs, args.labels)
    table = markdown_table(runs)
    draw(runs, args.out, args.group)
    if args.table:
      workdir_lib.write_text(args.table, table)
  except (UserError, OSError) as e:
    exit_with(str(e))
  print(table, end='')


if __name__ == '__main__':
  main()
