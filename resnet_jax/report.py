"""report.md: the one-page summary a run writes at its end.

A table of the config (model, data, optimizer, augmentation), the parameter
count, the best and final validation (of the averaged weights too, with
train.ema_decay), wall time and images/s; each member's row when the run
trained several; links to the history files and the plots. Built from the
run's summary and its metrics history alone (reporting.Reporter passes
them); `best_validation` is also compare.py's pick of a run's best step.
"""
import statistics

import jax

from resnet_jax import models, plots


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
  lines += [f'![{name[:-4]}](plots/{name})' for name in plots.PLOTS]
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
