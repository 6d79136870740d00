"""What the training loop reports and how it treats divergence.

ProgressLog sends each log interval's train metrics and each evaluation's
validation metrics to the reporter (files, TensorBoard, plots) and the
progress bar. The divergence policy (train.on_nonfinite): with 'stop', a
member whose loss or gradient is non-finite is frozen at its last good state
and the run stops when none is left; with 'skip', the step is not applied
and the run goes on. A non-finite validation loss never ranks a checkpoint.
"""
import collections
import sys

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from resnet_jax import config as config_lib
from resnet_jax.errors import UserError


class TrainingDiverged(UserError):
  """A non-finite loss or gradient, with train.on_nonfinite=stop."""


def member_name(member: dict) -> str:
  return (f'seed {member["seed"]}, learning rate {member["learning_rate"]:g}, '
          f'weight decay {member["weight_decay"]:g}')


def check_finite(fetched, first_step, on_nonfinite, active, members):
  """Reports the non-finite steps of each member; returns (skipped member
  steps, each member's `active` after the last step).

  With 'stop' a member's first non-finite step froze it (in the train step);
  the run stops when no member is left (a single run: at once).
  """
  finite = np.array([m['finite'] for m in fetched]).reshape(len(fetched), -1)
  was_active = np.concatenate([np.asarray(active)[None],
                               np.array([m['active'] for m in fetched])])
  if on_nonfinite == 'skip':
    for k in range(finite.shape[1]):
      bad = [first_step + i for i in np.flatnonzero(~finite[:, k])]
      who = (f' of member {k} ({member_name(members[k])})'
             if len(members) > 1 else '')
      if bad:
        tqdm.write(f'warning: skipped non-finite steps{who} {bad}',
                   file=sys.stderr)
    return int((~finite).sum()), was_active[-1]
  for k in range(finite.shape[1]):
    bad = np.flatnonzero(~finite[:, k] & was_active[:-1, k])
    if not bad.size:  # Finite, or frozen before (a validation reports it).
      continue
    step = first_step + int(bad[0])
    if len(members) == 1:
      raise TrainingDiverged(
          f'non-finite loss or gradient at step {step}; the update was not '
          'applied and the last good checkpoint is kept (lower '
          'train.learning_rate, or set train.on_nonfinite=skip)')
    tqdm.write(f'warning: member {k} ({member_name(members[k])}) diverged: '
               f'non-finite loss or gradient at step {step}; it stays frozen '
               'at its last good state, the others go on', file=sys.stderr)
  if not was_active[-1].any():
    raise TrainingDiverged(
        f'every member diverged (non-finite loss or gradient) by step '
        f'{first_step + len(fetched) - 1}; the last good checkpoint is kept '
        '(lower the learning rates, or set train.on_nonfinite=skip)')
  return 0, was_active[-1]


class ProgressLog:
  """Train metrics every train.log_every steps and validation metrics, to the
  reporter (files, TensorBoard, plots) and the progress bar (process 0).

  An interval's metrics are stacked on the devices when its last step is
  dispatched (`train`) and recorded when that step is seen to end
  (`step_done`, from pacing.Pacer), so the fetch never waits for a running
  step. Its images/s is the rate of its own steps, each timed by the pacer:
  evaluations, saves and the untimed first step after a start or a pause
  count neither images nor seconds.
  """

  def __init__(self, config, reporter, start: int, steps_per_epoch: int,
               active):
    self.config, self.reporter = config, reporter
    self.members = config_lib.members(config)
    self.active = np.asarray(active)  # As of the last fetched step.
    self.steps_per_epoch = steps_per_epoch
    self.bar = tqdm(total=config.train.steps, initial=start, unit='step',
                    dynamic_ncols=True, disable=jax.process_index() != 0)
    self.images_per_sec, self.skipped = None, 0
    self._queued = collections.deque()  # (last step, stacked metrics)
    # The timed steps since the last record: their count and seconds.
    self._timed, self._seconds = 0, 0.0

  def train(self, step: int, pending: list):
    """Queues the metrics of the interval that ends with `step`, just
    dispatched: stacked now, recorded when the step ends."""
    self._queued.append((step, _stacked(pending)))

  def step_done(self, step: int, seconds):
    """Step `step` ended, `seconds` after the step before (None: untimed)."""
    if seconds is not None:
      self._timed, self._seconds = self._timed + 1, self._seconds + seconds
    if self._queued and self._queued[0][0] == step:
      self._record(*self._queued.popleft())

  def _record(self, step: int, stacked: dict):
    """Fetches the metrics of the steps up to `step` and records their mean."""
    stacked = jax.device_get(stacked)
    count = len(stacked['loss'])
    fetched = [{k: v[i] for k, v in stacked.items()} for i in range(count)]
    skipped, self.active = check_finite(
        fetched, step - count + 1, self.config.train.on_nonfinite,
        self.active, self.members)
    self.skipped += skipped
    # Images of all members together, over the interval's timed steps.
    if self._timed:
      self.images_per_sec = (self._timed * self.config.train.batch_size
                             * len(self.members) / self._seconds)
    self._timed, self._seconds = 0, 0.0
    # Each member's mean over its applied steps; the record's mean over those.
    applied = np.array([m['finite'] & m['active'] for m in fetched])
    per_member = {}
    for k in ('loss', 'accuracy'):
      values = np.array([m[k] for m in fetched], np.float64)
      per_member[k] = [float(np.mean(v[a])) if a.any() else None
                       for v, a in zip(values.T, applied.T)]
    per_member['learning_rate'] = [
        float(x) for x in np.reshape(fetched[-1]['learning_rate'], -1)]
    record = {f'train_{k}': _mean(v) for k, v in per_member.items()}
    self.reporter.write({'step': step, 'epoch': step / self.steps_per_epoch,
                         **record, **self._by_member('train', per_member),
                         'images_per_sec': self.images_per_sec,
                         'skipped_steps': self.skipped})
    fmt = lambda x, spec: 'n/a' if x is None else format(x, spec)
    self.bar.set_postfix(loss=fmt(record['train_loss'], '.3f'),
                         acc=fmt(record['train_accuracy'], '.3f'),
                         lr=fmt(record['train_learning_rate'], '.4f'),
                         img_s=f'{self.images_per_sec or 0:.0f}')
    self.bar.update(step - self.bar.n)

  def _by_member(self, prefix: str, per_member: dict) -> dict:
    """{'PREFIX_KEY_memberK': value}: each member's figures, when several."""
    if len(self.members) == 1:
      return {}
    return {f'{prefix}_{key}_member{k}': v for key, values in per_member.items()
            for k, v in enumerate(values)}

  def validation(self, step: int, val: dict):
    """One evaluation's record: the raw weights' val_* and, with averaging
    (train.ema_decay), the averaged weights' val_ema_*."""
    record = self._validation_record('val', val)
    line = f'val_loss {val["loss"]:.4f} val_accuracy {val["accuracy"]:.4f}'
    if 'ema' in val:
      record.update(self._validation_record('val_ema', val['ema']))
      line += (f' (averaged weights: {val["ema"]["loss"]:.4f} '
               f'{val["ema"]["accuracy"]:.4f})')
    self.reporter.write({'step': step, 'epoch': step / self.steps_per_epoch,
                         **record})
    self.reporter.evaluated()
    if jax.process_index() == 0:
      self.bar.write(f'step {step}: {line}')

  def _validation_record(self, prefix: str, val: dict) -> dict:
    per_member = {'loss': [finite_or_none(x) for x in val['member_loss']],
                  'accuracy': val['member_accuracy']}
    extra = {}
    if len(self.members) > 1:
      extra[f'{prefix}_accuracy_std'] = float(np.std(val['member_accuracy']))
    return {f'{prefix}_loss': val['loss'],
            f'{prefix}_accuracy': val['accuracy'], **extra,
            **self._by_member(prefix, per_member)}

  def close(self):
    self.bar.close()


@jax.jit
def _stacked(metrics: list) -> dict:
  """An interval's per-step metrics stacked on the devices: a transfer per
  key instead of one per step and key (250 at log_every 50, 5-12 ms of
  host time on 2 CPU cores; stacked, under 1 ms)."""
  return jax.tree.map(lambda *steps: jnp.stack(steps), *metrics)


def _mean(values):
  """The mean of the values that are not None (None if none is)."""
  values = [v for v in values if v is not None]
  return float(np.mean(values)) if values else None


def finite_or_none(x):
  return float(x) if np.isfinite(x) else None


def check_validation(val: dict, step: int, on_nonfinite: str, members):
  """Each member's validation loss is finite (a bool array); with 'stop', a
  single run whose loss is not, or a run where no member's is, stops."""
  finite = np.isfinite(val['member_loss'])
  if on_nonfinite == 'stop' and not finite.any():
    raise TrainingDiverged(
        f'non-finite validation loss at step {step}; not saved, the last good '
        'checkpoint is kept (lower train.learning_rate, or set '
        'train.on_nonfinite=skip)')
  if on_nonfinite == 'stop':
    for k in np.flatnonzero(~finite):
      print(f'warning: member {k} ({member_name(members[k])}) has a '
            f'non-finite validation loss at step {step}; it stays frozen',
            file=sys.stderr)
  return finite


def ranking_metrics(val: dict, finite):
  """What best checkpoints are chosen by: the mean validation accuracy and
  loss of the members whose loss is finite (None if no member's is), of the
  raw weights or, with val['rank_by'] 'ema' (train.rank_by), the averaged
  ones (val['ema'], train.ema_decay)."""
  ranked = 'ema' if val.get('rank_by') == 'ema' else 'raw'
  if ranked == 'ema':
    val = val['ema']
    finite = finite & np.isfinite(val['member_loss'])
  if not finite.any():
    return None
  mean = lambda key: float(np.mean(np.asarray(val[key])[finite]))
  return {'val_accuracy': mean('member_accuracy'),
          'val_loss': mean('member_loss')}
